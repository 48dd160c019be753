from robot_bridge.policies.base import (
    POLICY_TYPES,
    Policy,
    PolicyLoadError,
    load_policy,
    read_policy_config,
    write_policy_config,
)

__all__ = [
    "POLICY_TYPES",
    "Policy",
    "PolicyLoadError",
    "load_policy",
    "read_policy_config",
    "write_policy_config",
]
