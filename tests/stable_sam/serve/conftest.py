"""The demo model (built once for all the serve tests) and a fresh session on it per test."""
import pytest


@pytest.fixture(scope="session")
def demo_model():
    from stable_sam.build import build_stable_sam

    return build_stable_sam("demo").eval()


@pytest.fixture
def session(demo_model):
    from stable_sam.serve.session import DemoSession

    return DemoSession(demo_model, cache_size=2)
