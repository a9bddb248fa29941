"""Shared basics below every layer: configs, atomic writes, images, seeded noise, sampling rules, errors."""
