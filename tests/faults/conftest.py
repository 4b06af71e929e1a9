import pytest


@pytest.fixture(autouse=True, scope="session")
def _import_modules_once():
    # pytester's in-process runs drop the modules first imported inside them, so a
    # second run would get fresh copies of this package's modules (and `datasets`,
    # imported by TransformerLens, refuses a second import). Import everything here,
    # before any inner run, so all runs share one copy.
    import transformer_lens.model_bridge  # noqa: F401

    try:   # the HTML report imports pyplot inside runs; a second copy breaks later plots
        import matplotlib.pyplot  # noqa: F401
    except ImportError:  # pragma: no cover
        pass

    import pytest_circuits.activations  # noqa: F401
    import pytest_circuits.metrics  # noqa: F401
    import pytest_circuits.models  # noqa: F401
    import pytest_circuits.session  # noqa: F401
    import pytest_circuits.tasks  # noqa: F401
