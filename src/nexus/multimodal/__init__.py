"""Vision-language (image + text) teachers and students: the synthetic corpus, image-text data,
the embedded default VLM teacher and the multimodal pipeline (``run_multimodal_pipeline.sh``)."""
