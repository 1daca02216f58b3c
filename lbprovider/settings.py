"""Load-balancer settings (SPEC §2.3): parsed once at the profile boundary.

Everything downstream sees the frozen :class:`LBSettings`, never the raw dict.
Unknown keys are kept and ignored, because llxprt-code profiles carry many
settings of their own; a known key with a bad value is an error.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

__all__ = ["DEFAULT_FAILOVER_STATUS_CODES", "SETTING_KEYS", "LBSettings"]

DEFAULT_FAILOVER_STATUS_CODES: tuple[int, ...] = (429, *range(500, 600))

_Status = Annotated[StrictInt, Field(ge=100, le=599)]
_PositiveMs = Annotated[StrictInt, Field(gt=0, le=86_400_000)]


class LBSettings(BaseModel):
    """The `ephemeralSettings` of a load-balancer profile, with defaults and bounds."""

    model_config = ConfigDict(
        extra="allow", frozen=True, hide_input_in_errors=True, defer_build=True
    )

    failover_retry_count: Annotated[StrictInt, Field(ge=1, le=100)] = 2
    failover_retry_delay_ms: Annotated[StrictInt, Field(ge=0, le=600_000)] = 0
    failover_on_network_errors: StrictBool = True
    failover_status_codes: tuple[_Status, ...] = DEFAULT_FAILOVER_STATUS_CODES
    # 0 and null both mean "off", as in llxprt-code.
    timeout_ms: Annotated[StrictInt, Field(ge=0, le=86_400_000)] | None = None
    tpm_threshold: Annotated[StrictInt, Field(ge=0)] | None = None
    circuit_breaker_enabled: StrictBool = False
    circuit_breaker_failure_threshold: Annotated[StrictInt, Field(ge=1, le=1000)] = 3
    # config.DEFAULT_FAILURE_WINDOW_MS, what a report assumes without building this model
    # (config names LBSettings, so it is not imported here; a test keeps the two equal).
    circuit_breaker_failure_window_ms: _PositiveMs = 60_000
    circuit_breaker_recovery_timeout_ms: _PositiveMs = 30_000
    circuit_breaker_max_recovery_timeout_ms: _PositiveMs = 300_000
    retry_after_max_ms: Annotated[StrictInt, Field(ge=0, le=86_400_000)] = 10_000
    stream_idle_timeout_ms: Annotated[StrictInt, Field(ge=0, le=86_400_000)] = 30_000
    failback_after_ms: Annotated[StrictInt, Field(ge=0, le=86_400_000)] = 30_000
    failover_on_content_policy: StrictBool = False
    # [v3] routing: conversation affinity (§3.5), rate-limit headroom (§3.6), hedging
    # (§4.3) and the panic probe (§3.3; our own switch, on by default).
    affinity_ttl_ms: Annotated[StrictInt, Field(ge=0, le=86_400_000)] = 300_000
    affinity_min_tokens: Annotated[StrictInt, Field(ge=0)] = 1024
    headroom_enabled: StrictBool = True
    hedge_after_ms: Annotated[StrictInt, Field(ge=0, le=86_400_000)] = 0
    hedge_budget_percent: Annotated[StrictInt, Field(ge=0, le=100)] = 10
    panic_probe_enabled: StrictBool = True

    @model_validator(mode="after")
    def _recovery_cap_not_below_start(self) -> LBSettings:
        if self.circuit_breaker_max_recovery_timeout_ms < self.circuit_breaker_recovery_timeout_ms:
            raise ValueError(
                "circuit_breaker_max_recovery_timeout_ms must be at least "
                "circuit_breaker_recovery_timeout_ms"
            )
        return self

    @property
    def first_chunk_timeout_s(self) -> float | None:
        """The first-chunk timeout in seconds, or None when off."""
        return self.timeout_ms / 1000 if self.timeout_ms else None

    @property
    def stream_idle_timeout_s(self) -> float | None:
        """The longest gap between two chunks after the first, in seconds; None when off."""
        return self.stream_idle_timeout_ms / 1000 if self.stream_idle_timeout_ms else None

    @property
    def extra_keys(self) -> dict[str, Any]:
        """Settings this version does not know (kept, ignored)."""
        return dict(self.__pydantic_extra__ or {})


SETTING_KEYS: frozenset[str] = frozenset(LBSettings.model_fields)
