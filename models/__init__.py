"""Re-id application on top of rga_ops: networks, data, losses, engine, evaluation, CLI."""
