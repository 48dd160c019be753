"""What every model package shares: the config convention (``gymnast_common.config``) and the
learning-rate schedule (``gymnast_common.schedule``). Imports nothing from gymnast's packages."""
