"""wdbound.provenance: what made a report (release, commit, libraries)."""

import wdbound
from wdbound.provenance import library_versions, made_by, stamp


def test_made_by_names_this_release_and_a_commit_in_a_checkout():
    made = made_by()
    assert made["wdbound"] == wdbound.__version__
    assert made["commit"] is None or (len(made["commit"]) == 40 and int(made["commit"], 16) >= 0)
    assert stamp(made).startswith(f"made by wdbound {wdbound.__version__}")


def test_library_versions_name_the_numerical_stack():
    import numpy
    import torch

    versions = library_versions()
    assert versions["torch"] == torch.__version__ and versions["numpy"] == numpy.__version__
    assert versions["wdbound"] == wdbound.__version__
