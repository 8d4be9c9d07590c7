"""Post-processing: the stage between decoding and writing (decoded frames in, the frames to write out).

Every path that decodes a video runs it (:meth:`videodiff.pipelines.VideoPipeline.generate`, so ``render()``,
batches, the web app and ``videodiff eval shapes`` alike), and what each step did goes into the sidecar. A step
is a callable ``step(clip) -> clip`` over a :class:`Clip` (uint8 frames ``[f h w 3]``, their frame rate and
img2vid's pinned pictures) with a ``record()`` for the sidecar; it may change the frame count, the size and the
fps. A step that changes the frame count or the size says what becomes of ``pictures`` (maps or drops them).
:func:`steps_for` turns :class:`~videodiff.settings.post.PostSettings` into the steps, in their fixed order.
"""

from videodiff.post.stage import Clip, PostStep, run_post, steps_for

__all__ = ["Clip", "PostStep", "run_post", "steps_for"]
