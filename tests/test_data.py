"""Data loading of train_sspo_sd15.py (through sspo_utils): Pick-a-Pic winners, imagefolder, plain caption data."""

import datasets
import pytest
import torch

import sspo_tiny
import sspo_utils
import train_sspo_sd15 as train
from sspo_utils import SSPOInputError


@pytest.fixture(scope="module", autouse=True)
def accelerate_state():
    """The scripts log through accelerate's logger, which needs its state."""
    from accelerate import PartialState

    return PartialState(cpu=True)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(tiny_model_dir, subfolder="tokenizer")


def parse(model_dir, *extra):
    return train.parse_args(["--pretrained_model_name_or_path", model_dir, "--resolution", "64", "--seed", "0", *extra])


def load_examples(args, tokenizer):
    dataset, caption_column, image_columns, is_pickapic = sspo_utils.prepare_image_dataset(args)
    preprocess = train.PreprocessTrain(args, tokenizer, caption_column, image_columns, is_pickapic)
    rows = dataset[:]
    return rows, preprocess(rows)


def center_rgb(pixel_values):
    """Mean colour of the central 8x8 patch, back in 0..255."""
    patch = pixel_values[:, 28:36, 28:36].mean(dim=(1, 2))
    return ((patch + 1) * 127.5).tolist()


def shape_color(caption):
    return sspo_tiny.COLORS[caption.split()[1]]


def assert_close_color(actual, expected, tolerance=25):
    assert all(abs(a - e) <= tolerance for a, e in zip(actual, expected)), (actual, expected)


def test_pickapic_keeps_labelled_winner_and_drops_ties(tiny_model_dir, tokenizer, tmp_path):
    labels = [1, 0, 0.5, 1, 0, 0.5]
    sspo_tiny.write_pickapic_parquet(str(tmp_path), labels)
    args = parse(tiny_model_dir, "--dataset_name", str(tmp_path))
    rows, processed = load_examples(args, tokenizer)
    assert len(rows["caption"]) == 4
    assert all(label in (0, 1) for label in rows["label_0"])
    # The winner is drawn in the caption's colours, the loser with swapped colours.
    for caption, pixels in zip(rows["caption"], processed["pixel_values"]):
        assert_close_color(center_rgb(pixels), shape_color(caption))
    assert "pixel_values_l" not in processed


def test_pickapic_dpo_pairs_winner_and_loser(tiny_model_dir, tokenizer, tmp_path):
    sspo_tiny.write_pickapic_parquet(str(tmp_path), [0, 1, 0.5])
    args = parse(tiny_model_dir, "--dataset_name", str(tmp_path), "--loss_type", "dpo", "--random_flip")
    rows, processed = load_examples(args, tokenizer)
    assert len(rows["caption"]) == 2
    for caption, winner, loser in zip(rows["caption"], processed["pixel_values"], processed["pixel_values_l"]):
        assert_close_color(center_rgb(winner), shape_color(caption))
        background = sspo_tiny.COLORS[caption.split()[-2]]
        assert_close_color(center_rgb(loser), background)  # colours swapped in the loser


def test_unlabeled_rows_are_dropped(tiny_model_dir, tmp_path):
    sspo_tiny.write_pickapic_parquet(str(tmp_path), [1, 0, 1])
    path = tmp_path / "data" / "train-00000-of-00001.parquet"
    dataset = datasets.Dataset.from_parquet(str(path))
    dataset = dataset.map(lambda row, i: {"has_label": i != 1}, with_indices=True)
    dataset.to_parquet(str(path))
    args = parse(tiny_model_dir, "--dataset_name", str(tmp_path))
    dataset, *_ = sspo_utils.prepare_image_dataset(args)
    assert len(dataset) == 2


def test_imagefolder_and_caption_column(tiny_model_dir, tiny_imagefolder_dir, tokenizer):
    args = parse(tiny_model_dir, "--train_data_dir", tiny_imagefolder_dir, "--max_train_samples", "5")
    rows, processed = load_examples(args, tokenizer)
    assert len(rows["text"]) == 5
    assert processed["pixel_values"][0].shape == (3, 64, 64)
    assert processed["pixel_values"][0].min() >= -1 and processed["pixel_values"][0].max() <= 1
    for caption, pixels in zip(rows["text"], processed["pixel_values"]):
        assert_close_color(center_rgb(pixels), shape_color(caption))
    decoded = train.collate_fn([{k: v[i] for k, v in processed.items()} for i in range(2)])
    assert decoded["pixel_values"].shape == (2, 3, 64, 64)
    assert decoded["input_ids"].shape == (2, tokenizer.model_max_length)


def test_plain_parquet_with_image_and_prompt_columns(tiny_model_dir, tokenizer, tmp_path):
    captions, images = zip(*sspo_tiny.synthetic_examples(3, size=80))
    dataset = datasets.Dataset.from_dict({"prompt": list(captions), "picture": list(images)},
                                         features=datasets.Features({"prompt": datasets.Value("string"),
                                                                     "picture": datasets.Image()}))
    dataset.to_parquet(str(tmp_path / "plain.parquet"))
    args = parse(tiny_model_dir, "--dataset_name", str(tmp_path / "plain.parquet"), "--image_column", "picture")
    rows, processed = load_examples(args, tokenizer)
    assert list(rows["prompt"]) == list(captions)
    assert processed["pixel_values"][0].shape == (3, 64, 64)  # resized and cropped from 80 px


def test_missing_image_column_names_the_flag(tiny_model_dir, tmp_path):
    datasets.Dataset.from_dict({"caption": ["a"], "other": [1]}).to_parquet(str(tmp_path / "x.parquet"))
    args = parse(tiny_model_dir, "--dataset_name", str(tmp_path / "x.parquet"))
    with pytest.raises(SSPOInputError, match="--image_column"):
        sspo_utils.prepare_image_dataset(args)


def test_dpo_on_winner_only_data_is_refused(tiny_model_dir, tiny_imagefolder_dir):
    args = parse(tiny_model_dir, "--train_data_dir", tiny_imagefolder_dir, "--loss_type", "dpo")
    with pytest.raises(SSPOInputError, match="preference pairs"):
        sspo_utils.prepare_image_dataset(args)


def test_streaming_pickapic_yields_winners(tiny_model_dir, tokenizer, tmp_path, accelerate_state):
    sspo_tiny.write_pickapic_parquet(str(tmp_path), [1, 0.5, 0, 1])
    args = parse(tiny_model_dir, "--dataset_name", str(tmp_path), "--streaming", "--max_train_steps", "1",
                 "--train_batch_size", "3")
    dataloader = train.build_dataloader(args, accelerate_state, tokenizer, sspo_utils.TrainingGenerators(0))
    batch = next(iter(dataloader))
    assert batch["pixel_values"].shape == (3, 3, 64, 64)


@pytest.mark.parametrize("flags, message", [
    (["--resolution", "60"], "multiple of 8"),
    (["--snapshot_steps", "0"], "--snapshot_steps"),
    (["--max_snapshots", "1"], "--max_snapshots"),
    (["--rank", "0"], "--rank"),
    (["--beta_dpo", "-1"], "--beta_dpo"),
    (["--proportion_empty_prompts", "1"], "--proportion_empty_prompts"),
    (["--proportion_empty_prompts", "-0.1"], "--proportion_empty_prompts"),
    (["--streaming"], "--max_train_steps"),
])
def test_nonsense_flags_are_rejected(tiny_model_dir, tiny_imagefolder_dir, flags, message):
    with pytest.raises(SSPOInputError, match=message):
        parse(tiny_model_dir, "--train_data_dir", tiny_imagefolder_dir, *flags)


def test_seed_zero_is_a_real_seed(tiny_model_dir, tiny_imagefolder_dir):
    args = parse(tiny_model_dir, "--train_data_dir", tiny_imagefolder_dir)
    assert args.seed == 0
    first = sspo_utils.TrainingGenerators(args.seed)
    second = sspo_utils.TrainingGenerators(args.seed)
    assert torch.equal(torch.randn(3, generator=first.noise), torch.randn(3, generator=second.noise))


def test_drop_captions_replaces_rows_with_the_empty_embedding_at_the_given_rate():
    embeds = torch.arange(1, 1 + 400 * 2 * 3, dtype=torch.float32).reshape(400, 2, 3)
    empty = torch.full((1, 2, 3), -7.0)
    dropped = sspo_utils.drop_captions(embeds, empty, 0.25, torch.Generator().manual_seed(0))
    is_empty = (dropped == -7.0).all(dim=(1, 2))
    kept = (dropped == embeds).all(dim=(1, 2))
    assert bool((is_empty ^ kept).all())  # every row is either untouched or wholly the empty caption
    assert 0.18 < is_empty.float().mean().item() < 0.32


def test_drop_captions_at_zero_draws_nothing():
    generator = torch.Generator().manual_seed(3)
    embeds = torch.randn(4, 2, 3)
    assert sspo_utils.drop_captions(embeds, torch.zeros(1, 2, 3), 0.0, generator) is embeds
    assert torch.equal(torch.rand(2, generator=generator), torch.rand(2, generator=torch.Generator().manual_seed(3)))
