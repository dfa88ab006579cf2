from sysout.training.module import GPTLitModule
from sysout.training.optim import OptimConfig, build_optimizer, lr_factor, parameter_groups

__all__ = ["GPTLitModule", "OptimConfig", "build_optimizer", "lr_factor", "parameter_groups"]
