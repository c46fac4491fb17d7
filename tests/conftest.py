"""Suite-wide settings: deterministic hypothesis, and the shared service fixtures."""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "loft",
    derandomize=True,
    deadline=None,
    max_examples=50,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("loft")
