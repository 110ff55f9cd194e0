"""The master pipeline: phases 1-5, resume mode, the release."""
