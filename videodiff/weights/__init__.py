"""Weights, layered bottom to top (imports point only downwards).

``hub`` (finding models, fingerprints, a model folder's ``videodiff.json``; no torch) <
``safetensors_header`` (one header reader; no torch) < ``checkpoints`` (safe reading, strict
loading) < ``lora_pairs`` (LoRA key grammar and scaling factors) < the format readers
``single_file``, ``motion_formats``, ``lora``, ``embeddings`` < ``inspect`` < ``models``
(assembling a model from its parts).
"""
