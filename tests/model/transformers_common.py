"""transformers' own common model tests, from the source distribution of the installed transformers.

The wheel ships no tests; the sdist on PyPI holds `tests/test_modeling_common.py` (`ModelTesterMixin`).
`load_test_modeling_common()` downloads the sdist once with pip (`pip download transformers==X --no-binary :all:
--no-deps`), keeps that file in `.cache/transformers-tests/<version>/` (git-ignored; `.ci/run` fills it before the
tests) and imports it. The sdist lacks two modules that file imports, `tests/generation/test_utils.py` and
`tests/exporters/test_export.py`: `GenerationChecks` below stands in for the first (the project's own generation
checks, in `GenerationTesterMixin`'s place), and the export mixin is left empty (exporting is not run here).
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

import torch
import transformers

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_ROOT = REPO_ROOT / ".cache" / "transformers-tests"
PACKAGE = "transformers_sdist_tests"
NEEDED = ("test_modeling_common.py",)


def cache_dir(version: str = transformers.__version__) -> Path:
    return CACHE_ROOT / version


def fetch(version: str = transformers.__version__, timeout: int = 600) -> Path:
    """Download the sdist and keep the needed test files; the cache folder appears complete or not at all."""
    target = cache_dir(version)
    if all((target / name).is_file() for name in NEEDED):
        return target
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_ROOT) as scratch:
        scratch = Path(scratch)
        command = [sys.executable, "-m", "pip", "download", f"transformers=={version}", "--no-binary", ":all:",
                   "--no-deps", "--disable-pip-version-check", "-q", "-d", str(scratch / "sdist")]
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=timeout)
        archive = next((scratch / "sdist").glob("transformers-*.tar.gz"))
        staging = scratch / "tests"
        staging.mkdir()
        with tarfile.open(archive) as tar:
            for name in NEEDED:
                member = tar.getmember(f"transformers-{version}/tests/{name}")
                (staging / name).write_bytes(tar.extractfile(member).read())
        (staging / "__init__.py").write_text("")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    return target


class GenerationChecks:
    """Generation with image blocks, in the place of `GenerationTesterMixin` (absent from the sdist): the cache,
    beam search, `inputs_embeds`, continuing from a returned cache and assisted decoding must all give what greedy
    decoding without any of them gives. Needs `self.model_tester.prepare_config_and_inputs_for_common()`."""

    max_new_tokens = 3

    def _generative_model(self):
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        model_class = next(cls for cls in self.all_model_classes if hasattr(cls, "generate") and cls.can_generate())
        torch.manual_seed(0)
        return model_class(config).eval(), inputs

    def _greedy(self, model, inputs, **kwargs):
        return model.generate(
            **inputs, max_new_tokens=self.max_new_tokens, min_new_tokens=self.max_new_tokens, do_sample=False, **kwargs
        )

    @torch.no_grad()
    def test_generate_with_and_without_cache(self):
        model, inputs = self._generative_model()
        cached = self._greedy(model, inputs)
        self.assertEqual(cached.shape, (inputs["input_ids"].shape[0], inputs["input_ids"].shape[1] + self.max_new_tokens))
        torch.testing.assert_close(self._greedy(model, inputs, use_cache=False), cached)

    @torch.no_grad()
    def test_beam_search_keeps_images_with_their_rows(self):
        model, inputs = self._generative_model()
        beams = self._greedy(model, inputs, num_beams=2, num_return_sequences=2)
        self.assertEqual(beams.shape[0], 2 * inputs["input_ids"].shape[0])
        for row in range(inputs["input_ids"].shape[0]):  # each row's beams equal that row searched alone
            single = {k: v[row : row + 1] for k, v in inputs.items()}
            torch.testing.assert_close(self._greedy(model, single, num_beams=2, num_return_sequences=2), beams[2 * row : 2 * row + 2])

    @torch.no_grad()
    def test_generate_from_inputs_embeds(self):
        model, inputs = self._generative_model()
        from_ids = self._greedy(model, inputs)[:, inputs["input_ids"].shape[1] :]
        embeds = {k: v for k, v in inputs.items() if k != "input_ids"}
        embeds["inputs_embeds"] = model.get_input_embeddings()(inputs["input_ids"])
        torch.testing.assert_close(self._greedy(model, embeds), from_ids)  # generate returns only the new tokens

    @torch.no_grad()
    def test_generate_from_random_inputs_embeds(self):
        """transformers' check that other `inputs_embeds` give other scores. Its own version passes the rows' ids
        without their images, which a row with an image block rejects by design ("N image blocks but 0 images");
        here it runs on the rows' text alone (block tokens removed), where it applies."""
        model, inputs = self._generative_model()
        ids = inputs["input_ids"]
        config = model.config
        block_ids = [config.image_start_token_id, config.image_patch_token_id, config.image_end_token_id,
                     config.dream_start_token_id, config.dream_end_token_id]
        text_ids = ids[~torch.isin(ids, torch.tensor(block_ids))].view(ids.shape[0], -1)
        embeds = model.get_input_embeddings()(text_ids)
        kwargs = dict(max_new_tokens=self.max_new_tokens, min_new_tokens=self.max_new_tokens, do_sample=False,
                      return_dict_in_generate=True, output_scores=True)
        from_embeds = model.generate(text_ids, inputs_embeds=embeds, **kwargs).scores
        from_random = model.generate(text_ids, inputs_embeds=torch.rand_like(embeds), **kwargs).scores
        self.assertEqual(len(from_embeds), self.max_new_tokens)
        for step in range(self.max_new_tokens):
            self.assertFalse(torch.allclose(from_embeds[step], from_random[step]))

    @torch.no_grad()
    def test_continue_from_returned_cache(self):
        model, inputs = self._generative_model()
        whole = self._greedy(model, inputs)
        first = model.generate(**inputs, max_new_tokens=1, min_new_tokens=1, do_sample=False, return_dict_in_generate=True)
        attention_mask = torch.cat([inputs["attention_mask"], torch.ones_like(first.sequences[:, -1:])], dim=1)
        rest = model.generate(
            input_ids=first.sequences,
            attention_mask=attention_mask,
            past_key_values=first.past_key_values,
            max_new_tokens=self.max_new_tokens - 1,
            min_new_tokens=self.max_new_tokens - 1,
            do_sample=False,
        )
        torch.testing.assert_close(rest, whole)

    @torch.no_grad()
    def test_assisted_decoding_with_images(self):
        model, inputs = self._generative_model()
        single = {k: v[:1] for k, v in inputs.items()}  # assisted decoding takes one sequence
        torch.testing.assert_close(self._greedy(model, single, assistant_model=model), self._greedy(model, single))


def load_test_modeling_common() -> types.ModuleType:
    """Import the cached `test_modeling_common.py` (fetching it first when missing)."""
    folder = fetch()
    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(folder)]
        sys.modules[PACKAGE] = package
        for name, attributes in {
            "generation": {},
            "generation.test_utils": {"GenerationTesterMixin": GenerationChecks},
            "exporters": {},
            "exporters.test_export": {"ExportTesterMixin": type("ExportTesterMixin", (), {})},
        }.items():
            module = types.ModuleType(f"{PACKAGE}.{name}")
            module.__dict__.update(attributes)
            if "." not in name:
                module.__path__ = []
            sys.modules[module.__name__] = module
    return importlib.import_module(f"{PACKAGE}.test_modeling_common")
