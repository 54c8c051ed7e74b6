"""The README's Python examples run and print what the README says (STYLE: doctest the README)."""

from __future__ import annotations

import doctest
import os

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


@pytest.mark.skipif(not os.path.exists(README), reason="no README.md")
def test_readme_examples():
    failures, tried = doctest.testfile(README, module_relative=False, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert tried > 0, "README has no >>> examples"
    assert failures == 0
