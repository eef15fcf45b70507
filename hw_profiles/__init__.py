"""Hardware profiles: the schema, its loader/validator and the bundled YAML profiles.

Public API (the site-file loader in ``brug.gateway`` uses these)::

    load_profile(name_or_path) -> Profile      # bundled name or a file path
    list_profiles() -> list[str]
    merge_overrides(profile, overrides, source, positions=None, prefix="") -> Profile
    Profile.to_port_dict() -> dict             # site-file port shape
    yamlconf.load_yaml(path) -> (data, positions); ConfigError(path, line, keypath, message)

This package imports nothing from ``brug.gateway``, ``brug.codecs`` or ``brug.talkgroups``.
"""

from brug.hw_profiles.profile import (
    PTT_PARAMS,
    SQUELCH_PARAMS,
    AudioSpec,
    CodecSpec,
    DriverSpec,
    FiltersSpec,
    PeiSpec,
    Profile,
    TimingSpec,
    list_profiles,
    load_profile,
    merge_overrides,
)
from brug.hw_profiles.yamlconf import ConfigError, load_yaml

__all__ = [
    "AudioSpec", "CodecSpec", "ConfigError", "DriverSpec", "FiltersSpec", "PeiSpec", "Profile",
    "PTT_PARAMS", "SQUELCH_PARAMS", "TimingSpec", "list_profiles", "load_profile", "load_yaml",
    "merge_overrides",
]
