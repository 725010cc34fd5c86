"""One typed config: the keys (schema.py), the rules across them (check.py), reading and writing it
(load.py) and describing it (describe.py: `baseline config`, docs/config.md)."""

from ..errors import ConfigError
from .check import get, validate
from .load import (
                   age_edges,
                   config_flags,
                   for_another_run,
                   from_dict,
                   img_hw,
                   load_config,
    machine_resets,
                   parse_override,
                   read_yaml,
                   save_yaml,
                   to_dict,
)
from .schema import (
                   AuditCfg,
                   AugCfg,
                   BenchCfg,
                   CheckCfg,
                   Config,
    CvCfg,
                   DataCfg,
                   FreezeCfg,
                   LogCfg,
                   LRFindCfg,
                   ModelCfg,
                   OptimCfg,
                   PseudoCfg,
                   RunCfg,
                   RunsCfg,
                   SchedCfg,
                   SplitCfg,
                   SubmitCfg,
                   SweepCfg,
                   TrainCfg,
                   WandbCfg,
                   meta,
                   walk,
)

__all__ = ["age_edges", "AuditCfg", "AugCfg", "BenchCfg", "CheckCfg", "Config", "CvCfg", "config_flags", "ConfigError",
           "DataCfg", "for_another_run", "FreezeCfg", "from_dict", "get", "img_hw", "load_config", "LogCfg",
           "LRFindCfg", "machine_resets", "meta", "ModelCfg", "OptimCfg", "parse_override", "PseudoCfg", "read_yaml",
           "RunCfg", "RunsCfg", "save_yaml", "SchedCfg", "SplitCfg", "SubmitCfg", "SweepCfg", "to_dict", "TrainCfg",
           "validate", "walk", "WandbCfg"]
