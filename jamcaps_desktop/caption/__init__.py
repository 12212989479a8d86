"""Captions: a few sentences per track saying what it sounds like, written from what the app knows of it."""
