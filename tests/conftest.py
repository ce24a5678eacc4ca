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
def ntrex_folder(tmp_path_factory):
    """`<lang>.txt` files of the embedded NTREX-128 training articles, one sentence per line (24 EU languages,
    aligned): what tests once read from ../shared/corpora/ntrex128."""
    from corpus_fixtures import lines_folder

    return lines_folder(tmp_path_factory.mktemp("ntrex") / "ntrex128", split="train")


@pytest.fixture(scope="session")
def heldout_folder(tmp_path_factory):
    """`<lang>.txt` files of the embedded corpus' held-out validation articles (aligned, never trained on): the
    evaluation text of tests that once read FLORES from ../shared."""
    from corpus_fixtures import lines_folder

    return lines_folder(tmp_path_factory.mktemp("heldout") / "heldout", split="val")


@pytest.fixture(scope="session")
def demo_txt(tmp_path_factory):
    """A small sample of the embedded corpus as `<lang>.txt` files (60 training sentences in each of the 24 languages,
    ~0.3 MB): quick tokenizer and data-stage runs on real text."""
    from corpus_fixtures import lines_folder

    return lines_folder(tmp_path_factory.mktemp("demo_txt") / "demo", n=60, split="train")
