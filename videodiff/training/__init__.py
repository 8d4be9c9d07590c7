"""Training: clips -> VAE latents -> noise prior + q(x_t|x_0) -> video U-Net -> loss -> chosen weights only."""
