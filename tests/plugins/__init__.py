"""One-file plugins used by the tests: the recipes of docs/architecture.md, registered and run for real."""
