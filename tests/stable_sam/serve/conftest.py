"""The demo model, its session and a live server on 127.0.0.1 (a free port), shared by the
serve tests; the server stops at the end of the module that started it."""
import pytest



@pytest.fixture(scope="session")
def demo_model():
    from stable_sam.build import build_stable_sam

    return build_stable_sam("demo").eval()


@pytest.fixture
def session(demo_model):
    from stable_sam.serve.session import DemoSession

    return DemoSession(demo_model, cache_size=2)

