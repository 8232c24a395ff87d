"""distill: the core of the kit. Model format and loading, the synthetic world, LLaVA-format data,
losses, the DistillTrainer and the command line (`python -m distill --help`)."""
