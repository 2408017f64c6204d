"""Every registered backend loads its tiny offline build through load_backend and honours the interface."""

import pytest
from PIL import Image

from zerovlm.config import InferConfig
from zerovlm.vlm.base import Request, VisionLanguageModel
from zerovlm.vlm.registry import BACKENDS, load_backend
from zerovlm.vlm.tiny import build_tiny_llava, build_tiny_minigpt4

TINY_BUILDERS = {"llava": build_tiny_llava, "minigpt4": build_tiny_minigpt4, "hf_auto": build_tiny_llava}


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_backends")
    folders = {}
    for name, builder in TINY_BUILDERS.items():
        folders[name] = root / builder.__name__
        if not folders[name].exists():
            builder(folders[name], seed=0)
    return folders


def test_every_backend_has_a_tiny_build():
    assert set(BACKENDS) == set(TINY_BUILDERS)


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_backend_contract(name, tiny_folders):
    backend = load_backend(InferConfig(backend=name, model=str(tiny_folders[name]), device="cpu", batch_size=2))
    assert isinstance(backend, VisionLanguageModel) and backend.name == name
    image = Image.new("RGB", (48, 32), (90, 20, 160))
    requests = [
        Request((image,), "Is the purple box left of the cup?", ("Yes", "No")),
        Request((image,), "Which caption is right?", ("A box on a cup", "A box under a cup", "A box")),
        Request((image,), "Describe the image."),
    ]
    scores = backend.option_logprobs(requests)
    assert [len(s) for s in scores] == [2, 3, 0]
    assert all(s <= 0 for row in scores for s in row)
    texts = backend.generate(requests, max_new_tokens=4, stop=("###",))
    assert len(texts) == 3 and all(isinstance(t, str) and "###" not in t for t in texts)
    assert isinstance(backend.render_prompt(requests[0]), str) and backend.info()["name"] == name
