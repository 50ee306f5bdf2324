"""Clips: the evidence store for node uploads (content-addressed, custody in the journal) and the distribution of
warning audio to speakers."""
