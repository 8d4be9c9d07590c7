"""Settings, torch-free: one typed dataclass per render stage and for training, with each field's default,
help, choices and bounds in its metadata, so that every option list can be generated from the fields.

- :mod:`~videodiff.settings.fields`: :func:`setting` (how a field is written), :func:`options` (how option
  lists read the fields back), the bounds and choices checks ``validate()`` runs from the metadata
- :mod:`~videodiff.settings.sample`: :class:`SampleSettings` (what to sample) and its names (schedulers, noise ...)
- :mod:`~videodiff.settings.render`: :class:`LoadSettings`, :class:`InputSettings`, :class:`WriteSettings`,
  :class:`RenderConfig` (all stages flat), output formats, the keys a model may record as its defaults
- :mod:`~videodiff.settings.post`: :class:`PostSettings` (what happens between decoding and writing)
- :mod:`~videodiff.settings.train`: :class:`TrainConfig`
- :mod:`~videodiff.settings.files`: settings files and precedence (:func:`load_config_file`, :func:`merge`,
  :func:`resolve`, :func:`parse_defaults`, :func:`to_dict`)
- :mod:`~videodiff.settings.parse`: the syntax of flag strings (``FRAME:TEXT``, ``PATH[:SCALE]``, ``R,G,B`` ...)
- :mod:`~videodiff.settings.checks`: the limits (``MAX_FRAMES`` ...) and checks beyond one field's bounds

No torch import here or below: the CLI's ``--help`` reads these.
"""
