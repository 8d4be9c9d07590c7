"""The pipeline's parts (:class:`videodiff.pipelines.VideoPipeline` chains them): devices and memory savers
(:mod:`.devices`), inputs, conditioning and results as plain data (:mod:`.inputs`), where sampling starts, per kind of
render (:mod:`.starting`), FreeInit's further passes (:mod:`.freeinit`)."""
