"""What every stage and command shares: typed params, file formats and atomic writes, the stage
skeleton, MLflow tracking, and the torch runtime (device, threads)."""
