"""scforge test suite (a package, so `tests.conftest` never resolves to a third-party `tests`)."""
