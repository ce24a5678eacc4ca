"""Shared test fixtures."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny shapes run fastest on one thread; on a shared machine, OpenMP barriers across busy cores stall them."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def demo_txt(tmp_path_factory):
    """A small sample of the embedded corpus as `<lang>.txt` files (60 training sentences in each of the 24 languages,
    ~0.3 MB): quick tokenizer and data-stage runs on real text."""
    from corpus_fixtures import lines_folder

    return lines_folder(tmp_path_factory.mktemp("demo_txt") / "demo", n=60, split="train")
