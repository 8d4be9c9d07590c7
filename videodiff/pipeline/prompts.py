"""Stage 1: the prompts (and the MotionLoRAs their words trigger) as the conditioning object the sampler carries.

Functions of a loaded pipeline (:class:`videodiff.pipelines.VideoPipeline`, duck-typed: its text encoding,
trigger LoRAs and vocabulary). Further conditioning inputs (control maps, image prompts) join the
:class:`~videodiff.sampling.Cond` built here.
"""

from __future__ import annotations

from videodiff import sampling, text
from videodiff.config import SampleSettings
from videodiff.log import notice
from videodiff.pipeline.inputs import Conditioning
from videodiff.settings.ip_adapter import parse_image_prompts
from videodiff.weights.hub import describe_vocabulary, unknown_words, vocabulary_words


def tell_unknown_words(pipe, prompt: str) -> None:
    """A closed-vocabulary model (the built-in one) renders noise for words it never saw: name them, once."""
    vocabulary = pipe.parts.vocabulary
    unknown = unknown_words(prompt, vocabulary)
    if unknown and prompt not in pipe._told_unknown:
        pipe._told_unknown.add(prompt)
        knows = describe_vocabulary(vocabulary, heldout=False)
        notice(text.unknown_words_notice(prompt, unknown, vocabulary_words(vocabulary), knows), about="the prompt")

def conditioning(pipe, settings: SampleSettings) -> Conditioning:
    """Stage 1: switch to the MotionLoRAs the prompt's words trigger; encode the prompt, and the negative
    one when guidance runs."""
    prompts = settings.keyframes()  # {frame: prompt}: one at frame 0, or prompt travel's
    words = " ".join(prompts.values())
    triggered = tuple(t.word for t in pipe.triggers.select(words)) if pipe.triggers else ()
    guided = sampling.uses_guidance(settings.guidance)
    if settings.negative and not guided:
        notice(f"the negative prompt has no effect at guidance {settings.guidance:g} (it needs guidance above 1)")
    if settings.guidance_interval is not None and not guided:
        notice(f"--guidance-interval has no effect at guidance {settings.guidance:g} (it needs guidance above 1)")
    for prompt in prompts.values():
        tell_unknown_words(pipe, prompt)
    if settings.prompt_at:  # prompt travel: a context per frame [1 f n d]
        contexts = {frame: pipe.encode(prompt) for frame, prompt in prompts.items()}
        context = text.travel(contexts, settings.frames, settings.travel)
    else:
        context = pipe.encode(settings.prompt)
    uncond = pipe.encode(settings.negative or "") if guided else None
    return Conditioning(sampling.Cond.text(context, uncond), triggered)


def with_image_prompts(pipe, cond: sampling.Cond, ip_adapters, frames: int, travel: str) -> sampling.Cond:
    """``cond`` with IP-Adapter's image prompts (:mod:`videodiff.pipeline.image_prompts`, imported only when some
    are given, so a render without them loads none of IP-Adapter's code: tests/test_imports.py)."""
    if not parse_image_prompts(ip_adapters):
        return cond
    from videodiff.pipeline import image_prompts

    return image_prompts.with_image_prompts(pipe, cond, ip_adapters, frames, travel)
