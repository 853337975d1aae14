"""Deduplication and decontamination stages."""
