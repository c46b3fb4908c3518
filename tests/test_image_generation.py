"""User-guided image generation (issue 7): code tokens, constrained decoding, the pipeline (metrics elsewhere)."""

import copy
import doctest
import json

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, LogitsProcessorList, pipeline

import modeling_unimp.pipeline_image_generation_unimp as pipeline_module
from modeling_unimp import UniMPForConditionalGeneration, UniMPImageTokenizer, UniMPImageTokenizerConfig, UniMPProcessor
from modeling_unimp.pipeline_image_generation_unimp import UniMPImageCodeLogitsProcessor
from modeling_unimp.prompt_templates import image_code_token, render_record
from tests.conftest import REPO_ROOT, make_tiny_config

CODEBOOK_SIZE = 16


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy shared CPU every op then waits for a
    descheduled worker (about 10 ms each); one thread keeps these tests fast and deterministic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_image_tokenizer(resolution: int = 8) -> UniMPImageTokenizer:
    """8-px images, 2 halvings -> a 2 x 2 grid = 4 codes of 16: generation takes 5 steps."""
    config = UniMPImageTokenizerConfig(resolution=resolution, base_channels=8, channel_multipliers=(1, 1, 1),
                                       norm_num_groups=4, codebook_size=CODEBOOK_SIZE, code_dim=4,
                                       use_mid_attention=False)
    return UniMPImageTokenizer(config).eval()


@pytest.fixture
def code_processor(tiny_tokenizer, tmp_path):
    paths = []
    for name, color in (("m1", "red"), ("m2", "blue")):
        path = tmp_path / f"{name}.png"
        Image.new("RGB", (20, 30), color).save(path)
        paths.append(str(path))
    return UniMPProcessor.from_catalogue(copy.deepcopy(tiny_tokenizer), ["m1", "m2", "m3"], ["Toy Story", "Heat", "Up"],
                                         paths + [None], image_size=32, num_image_code_tokens=CODEBOOK_SIZE)


@pytest.fixture
def code_model(code_processor):
    model = UniMPForConditionalGeneration(make_tiny_config(gate_init=0.5)).eval()
    code_processor.prepare_model(model)
    return model


def test_docstring_examples_run(code_processor, code_model):
    extraglobs = {"model": code_model, "processor": code_processor, "image_tokenizer": _tiny_image_tokenizer()}
    result = doctest.testmod(pipeline_module, extraglobs=extraglobs, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 6 and result.failed == 0  # the constraint's example and the pipeline's


def test_code_tokens_are_contiguous_single_tokens_recorded_in_the_config(code_processor, code_model):
    tokenizer = code_processor.tokenizer
    ids = tokenizer("ID <img_3> <img_15><img_0> <|endofchunk|>", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids)[-4:] == ["<img_3>", "<img_15>", "<img_0>", "<|endofchunk|>"]
    start = code_model.config.image_code_token_start_id
    assert code_model.config.num_image_code_tokens == CODEBOOK_SIZE
    codes = [image_code_token(code) for code in range(CODEBOOK_SIZE)]
    assert tokenizer.convert_tokens_to_ids(codes) == list(range(start, start + CODEBOOK_SIZE))
    assert code_model.get_input_embeddings().num_embeddings == len(tokenizer)


def test_code_tokens_round_trip_through_processor_save_and_load(code_processor, tmp_path):
    code_processor.save_pretrained(tmp_path / "processor")
    loaded = AutoProcessor.from_pretrained(tmp_path / "processor")
    assert loaded.num_image_code_tokens == CODEBOOK_SIZE
    assert loaded.model_token_ids() == code_processor.model_token_ids()
    text = "<image> Title Heat ID <img_1> <img_15> <|endofchunk|> Query: heat <answer> <img_7>"
    first = code_processor(text=[text], images=[[None]])
    second = loaded(text=[text], images=[[None]])
    assert torch.equal(first["input_ids"], second["input_ids"])


def test_processor_without_code_tokens_records_none(tiny_processor):
    assert tiny_processor.image_code_token_start_id is None
    assert "image_code_token_start_id" not in tiny_processor.model_token_ids()


def test_template_answer_is_the_tokenizer_code_string():
    image_tokenizer = _tiny_image_tokenizer()
    codes = torch.tensor([3, 0, 15, 7])
    item = {"item_id": "a", "title": "Heat", "attributes": [("Title", "Heat")], "image": None}
    record = {"task": "imggen", "history": [{**item, "image_codes": [1, 2, 3, 4]}],
              "target": {**item, "image_codes": image_tokenizer.codes_to_string(codes)}, "query": "heat"}
    rendered = render_record(record, "train")
    assert rendered["answer"] == "<img_3> <img_0> <img_15> <img_7>"
    assert torch.equal(image_tokenizer.string_to_codes(rendered["answer"]), codes)
    assert "ID <img_1> <img_2> <img_3> <img_4> <|endofchunk|>" in rendered["text"]  # code indices render the same


def test_constraint_allows_codes_for_the_grid_then_only_eos():
    constraint = UniMPImageCodeLogitsProcessor(code_token_start_id=10, num_image_code_tokens=4, num_image_codes=3,
                                               eos_token_id=1, prompt_length=5)
    for step, allowed in [(0, [10, 11, 12, 13]), (2, [10, 11, 12, 13]), (3, [1]), (4, [1])]:
        scores = constraint(torch.zeros(2, 5 + step, dtype=torch.long), torch.randn(2, 20))
        assert [torch.isfinite(row).nonzero().flatten().tolist() for row in scores] == [allowed, allowed]
    with pytest.raises(ValueError, match="inside the code-token range"):
        UniMPImageCodeLogitsProcessor(code_token_start_id=0, num_image_code_tokens=4, num_image_codes=3,
                                      eos_token_id=2, prompt_length=5)


@pytest.mark.parametrize("generate_kwargs", [{"do_sample": False}, {"do_sample": True, "temperature": 5.0}])
def test_constrained_generation_always_yields_one_full_valid_grid(code_processor, code_model, generate_kwargs):
    image_tokenizer = _tiny_image_tokenizer()
    tokenizer = code_processor.tokenizer
    num_codes = image_tokenizer.config.num_image_codes
    generator = torch.Generator().manual_seed(0)
    vocab_size = len(tokenizer)
    outputs = []
    for _ in range(4):  # 4 batches of 25 random prompts, left-padded, of random length, codes included
        lengths = torch.randint(1, 12, (25,), generator=generator)
        input_ids = torch.full((25, int(lengths.max())), tokenizer.pad_token_id)
        attention_mask = torch.zeros_like(input_ids)
        for row, length in enumerate(lengths.tolist()):
            input_ids[row, -length:] = torch.randint(2, vocab_size, (length,), generator=generator)
            attention_mask[row, -length:] = 1
        input_ids[input_ids == code_processor.image_token_id] = 2  # text-only prompts: no <image> without pixels
        constraint = UniMPImageCodeLogitsProcessor(
            code_token_start_id=code_processor.image_code_token_start_id, num_image_code_tokens=CODEBOOK_SIZE,
            num_image_codes=num_codes, eos_token_id=tokenizer.eos_token_id, prompt_length=input_ids.shape[1])
        generated = code_model.generate(
            input_ids=input_ids, attention_mask=attention_mask, logits_processor=LogitsProcessorList([constraint]),
            max_new_tokens=num_codes + 5, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            **generate_kwargs)
        outputs.extend(generated[:, input_ids.shape[1]:].tolist())
    assert len(outputs) == 100
    start = code_model.config.image_code_token_start_id
    for continuation in outputs:
        assert continuation[num_codes] == tokenizer.eos_token_id  # the grid, then EOS, then nothing but padding
        assert all(start <= token < start + CODEBOOK_SIZE for token in continuation[:num_codes])
        text = tokenizer.decode(continuation, skip_special_tokens=True)
        codes = image_tokenizer.string_to_codes(text)
        assert codes.tolist() == [token - start for token in continuation[:num_codes]]


@pytest.mark.parametrize("output_size, expected", [(None, (8, 8)), (40, (40, 40)), ((48, 24), (48, 24))])
def test_pipeline_returns_an_image_of_the_configured_size(code_processor, code_model, output_size, expected):
    generate_image = pipeline("unimp-generate-image", model=code_model, processor=code_processor,
                              image_tokenizer=_tiny_image_tokenizer(), device="cpu")
    kwargs = {} if output_size is None else {"output_size": output_size}
    image = generate_image(["m1", "m2"], query="an action movie", **kwargs)
    assert isinstance(image, Image.Image) and image.size == expected and image.mode == "RGB"


def test_pipeline_batches_item_dicts_and_returns_codes(code_processor, code_model):
    image_tokenizer = _tiny_image_tokenizer()
    generate_image = pipeline("unimp-generate-image", model=code_model, processor=code_processor,
                              image_tokenizer=image_tokenizer, device="cpu")
    history = [{"title": "Green Towel", "image": Image.new("RGB", (9, 9), "green")},
               {"title": "Lamp", "image_codes": "<img_1> <img_2> <img_3> <img_4>"}, "m3"]  # m3: no image
    with pytest.warns(UserWarning, match="1 history item"):
        results = generate_image([{"history": history, "query": "towel"}, {"history": ["m1"], "query": "red"}],
                                 return_codes=True)
    assert len(results) == 2
    for result in results:
        assert len(result["codes"]) == image_tokenizer.config.num_image_codes
        assert image_tokenizer.string_to_codes(result["code_string"]).tolist() == result["codes"]


def test_pipeline_loads_the_image_tokenizer_and_history_window_recorded_in_the_checkpoint(code_processor, code_model,
                                                                                          tmp_path):
    assert code_processor.image_generation_max_history_items == 2  # the reference's window, the default
    code_processor.vq_model_name_or_path = "image_tokenizer"  # relative to the checkpoint folder
    code_processor.image_generation_max_history_items = 1  # what recipes.train_image_generation trained with
    code_model.save_pretrained(tmp_path)
    code_processor.save_pretrained(tmp_path)
    _tiny_image_tokenizer().save_pretrained(tmp_path / "image_tokenizer")
    generate_image = pipeline("unimp-generate-image", model=str(tmp_path), device="cpu")
    assert generate_image.processor.image_generation_max_history_items == 1
    assert generate_image(["m2"], query="heat").size == (8, 8)

    def num_images_shown(**kwargs):
        inputs = generate_image.preprocess([{"history": ["m1", "m2"], "query": "heat"}], **kwargs)["model_inputs"]
        return int((inputs["input_ids"] == generate_image.processor.image_token_id).sum())

    assert num_images_shown() == 1 and num_images_shown(max_history_items=2) == 2


@pytest.mark.parametrize("window", [0, -1, 1.5, True, "2"])
def test_processor_rejects_a_bad_image_generation_window_naming_it(tiny_processor, window):
    with pytest.raises(ValueError, match="image_generation_max_history_items must be an integer >= 1"):
        UniMPProcessor(image_processor=tiny_processor.image_processor, tokenizer=tiny_processor.tokenizer,
                       image_generation_max_history_items=window)


@pytest.mark.parametrize("history, query, message", [
    ([], "q", "history is empty"),
    (["m1"], "  ", "non-empty `query`"),
    (["zz"], "q", "not in the processor's catalogue"),
])
def test_pipeline_rejects_bad_input_naming_the_fix(code_processor, code_model, history, query, message):
    generate_image = pipeline("unimp-generate-image", model=code_model, processor=code_processor,
                              image_tokenizer=_tiny_image_tokenizer(), device="cpu")
    with pytest.raises((ValueError, KeyError), match=message):
        generate_image({"history": history, "query": query})


def test_pipeline_rejects_a_history_without_images_or_codes(code_processor, code_model):
    generate_image = pipeline("unimp-generate-image", model=code_model, processor=code_processor,
                              image_tokenizer=_tiny_image_tokenizer(), device="cpu")
    with pytest.raises(ValueError, match="no history item has an image"), pytest.warns(UserWarning, match="skipped"):
        generate_image(["m3"], query="up")


def test_pipeline_rejects_a_model_without_code_tokens(tiny_processor):
    model = UniMPForConditionalGeneration(make_tiny_config())
    tiny_processor.prepare_model(model)
    with pytest.raises(ValueError, match="num_image_code_tokens"):
        pipeline("unimp-generate-image", model=model, processor=tiny_processor,
                 image_tokenizer=_tiny_image_tokenizer(), device="cpu")


# ----------------------------------------------------------------------------------------------
# Recipe (real data, a few steps)
# ----------------------------------------------------------------------------------------------

def test_recipe_refuses_a_generation_split_it_cannot_hold_out_and_train_negatives(tmp_path):
    from recipes.train_image_generation import main, parse_args

    config = REPO_ROOT / "recipes" / "configs" / "imggen_ml100k.yaml"
    args = parse_args([str(config), f"output_dir={tmp_path}", "generation_splits=[validation,train]"])
    with pytest.raises(ValueError, match=r"generation_splits: \['train'\]"):
        main(*args)
    args = parse_args([str(config), f"output_dir={tmp_path}", "train_negatives=seen"])
    with pytest.raises(ValueError, match="train_negatives='seen' is a recipes.train key; train_image_generation"):
        main(*args)


@pytest.mark.slow
def test_recipe_trains_saves_and_its_folder_serves_the_pipeline(data_dir, tmp_path):
    from recipes.train_image_generation import main, parse_args

    tokenizer_path = REPO_ROOT / "outputs" / "image_tokenizer" / "ml-100k-posters"
    if not (tokenizer_path / "config.json").is_file():
        pytest.skip(f"no trained image tokenizer at {tokenizer_path} (recipes/configs/image_tokenizer_tiny.yaml)")
    config = REPO_ROOT / "recipes" / "configs" / "imggen_ml100k.yaml"
    args = parse_args([str(config), f"data_dir={data_dir}", f"output_dir={tmp_path}", "max_steps=2",
                       "max_train_users=20", "max_test_users=4", f"image_tokenizer_name_or_path={tokenizer_path}",
                       "tasks=[imggen,rec]", "per_device_train_batch_size=2", "tokenizer_vocab_size=500",
                       "generation_splits=[validation,test]", "max_eval_users=3"])
    metrics = main(*args)
    assert metrics["global_step"] == 2 and metrics["num_test_users"] == 4
    assert metrics["validation"]["num_users"] == 3 and 0.0 <= metrics["validation"]["code_accuracy"] <= 1.0
    assert len((tmp_path / "validation_generations.jsonl").read_text().splitlines()) == 3
    assert 0.0 <= metrics["code_accuracy"] <= 1.0
    generations = (tmp_path / "test_generations.jsonl").read_text().splitlines()
    assert len(generations) == 4 and not list(tmp_path.glob("checkpoint-*"))
    generate_image = pipeline("unimp-generate-image", model=str(tmp_path), device="cpu")
    history = json.loads(generations[0])["history_item_ids"]
    assert generate_image(history, query="a movie").size == (64, 64)
