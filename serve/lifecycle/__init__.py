"""The model lifecycle: repository and config, vetting, load probe, registry, control, runtime."""
