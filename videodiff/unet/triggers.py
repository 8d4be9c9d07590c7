"""MotionLoRAs merged only for prompts that contain their trigger word.

AnimateDiff steers motion (camera pans, zooms) with one MotionLoRA per motion, chosen by the
user. A trigger word lets the prompt choose: ``--motion-lora-trigger left=pan-left.safetensors``
merges that LoRA for every prompt with the word "left" and takes it out again for prompts
without it, so one batch can mix motions. A model folder can name its own triggers in its
``videodiff.json``: ``{"motion_lora_triggers": {"left": "motion_loras/left.safetensors"}}``
(paths relative to the folder, ``PATH[:SCALE]``).

The syntax (``WORD=PATH[:SCALE]``) is parsed in :mod:`videodiff.config`; the files are read
by :mod:`videodiff.weights.models`. This is the runtime part: switching the weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from videodiff.config import words_of


@dataclass(frozen=True, eq=False)  # compared by identity: the deltas are tensors
class Trigger:
    word: str  # lower case, one word (path and scale are in the pipeline's sources)
    deltas: dict[str, torch.Tensor]  # motion-stack weight name -> float32 update (CPU)


class TriggeredLoRAs:
    """Keeps a motion stack's weights equal to the base plus the LoRAs whose words the current prompt has.

    The touched weights are copied once (as they are when this is made: build it after the
    stack has its final device and dtype), and restored exactly before another set is merged.
    """

    def __init__(self, stack: torch.nn.Module, triggers: tuple[Trigger, ...]) -> None:
        params = dict(stack.named_parameters())
        self.triggers = triggers
        self.params = {n: params[n] for t in triggers for n in t.deltas}
        self.base = {n: p.detach().clone() for n, p in self.params.items()}
        self.active: tuple[Trigger, ...] = ()

    @torch.no_grad()
    def select(self, prompt: str) -> tuple[Trigger, ...]:
        """Merge exactly the LoRAs whose trigger words are in ``prompt``; returns them."""
        words = words_of(prompt)
        active = tuple(t for t in self.triggers if t.word in words)
        if active != self.active:
            for name, p in self.params.items():
                p.copy_(self.base[name])
            for t in active:
                for name, delta in t.deltas.items():
                    p = self.params[name]
                    p.add_(delta.to(p.device, p.dtype))
            self.active = active
        return active
