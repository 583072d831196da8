"""The training configuration: every value checked when built — from Python, a JSON file or the command line — and
the options that only make sense together refused apart, in one line naming the flag."""

import json

import pytest

from hfddpm.training import ProgressiveDistillationConfig, TrainingConfig


@pytest.mark.parametrize(
    "options, words",
    [
        ({"learning_rate": float("nan")}, r"--learning_rate must be in \(0, inf\), got nan"),
        ({"max_grad_norm": 0.0}, r"--max_grad_norm must be in \(0, inf\)"),  # a non-finite gradient would pass
        ({"adam_beta2": 1.0}, r"--adam_beta2 must be in \[0, 1\)"),
        ({"snr_gamma": float("nan")}, r"--snr_gamma must be in \(0, inf\)"),  # NaN made every loss NaN
        ({"seed": 2**32}, r"--seed must be in \[0, 4294967295\]"),  # NumPy's limit
        ({"train_batch_size": 0}, r"--train_batch_size must be in \[1, inf\)"),
        ({"preprocessing_num_workers": 0}, r"--preprocessing_num_workers must be in \[1, inf\)"),
        ({"report_to": "wandb"}, r"--report_to must be one of \['tensorboard', 'none'\]"),
        ({"reverse_variance": "analytic"}, r"--reverse_variance must be one of"),  # measured after training
        ({"eval_metrics": ["fid", "is"]}, r"--eval_metrics must be one of"),
        ({"loss_type": "hybrid"}, r"hybrid's bound term trains a learned variance only"),
        ({"reverse_variance": "learned", "loss_type": "simple"}, r"pair hybrid with learned_range or learned"),
        ({"loss_type": "vlb", "snr_gamma": 5.0}, r"--snr_gamma weights the squared error"),
        ({"label_column": "y"}, r"--label_column is for class-conditional training; add --class_conditional"),
        ({"class_conditional": True, "class_dropout_prob": 0.0}, r"--class_dropout_prob must be in \(0, 1\)"),
        ({"hub_push_intermediate": True}, r"--hub_push_intermediate needs --push_to_hub and --save_model_steps"),
        ({"push_to_hub": True, "hub_model_id": "a/b/c"}, r"'a/b/c' is not a Hub repository id"),
        ({"eval_every": 5, "train_data_dir": "images"}, r"--eval_every needs --eval_metrics"),
        ({"continuous_time": "vp", "prediction_type": "v_prediction"}, r"--continuous_time trains ε-prediction"),
        ({"continuous_time": "learned"}, r"are for the bound: add --loss_type vlb"),
        ({"continuous_time": "vp", "timestep_sampling": "importance"}, r"are for the bound"),
        ({"timestep_sampling": "importance"}, r"importance is for --continuous_time"),
        (
            {"continuous_time": "learned", "loss_type": "vlb", "timestep_sampling": "importance"},
            r"importance needs a fixed schedule",
        ),
    ],
)
def test_the_configuration_refuses_bad_values_and_combinations_in_one_line(options, words):
    with pytest.raises(ValueError, match=words):
        TrainingConfig(**options)


def test_values_of_the_wrong_kind_are_type_errors_naming_the_flag():
    with pytest.raises(TypeError, match=r"--train_batch_size must be int, got '64' \(str\)"):
        TrainingConfig(train_batch_size="64")
    with pytest.raises(TypeError, match=r"--use_ema must be bool, got 'yes'"):
        TrainingConfig(use_ema="yes")


def test_the_configuration_fills_its_defaults_and_records_no_token():
    config = TrainingConfig(hub_token="hf_secret")
    assert (config.max_train_steps, config.num_epochs, config.cpu_threads, config.loss_type) == (
        2000,
        None,
        1,
        "simple",
    )
    assert "hf_secret" not in json.dumps(config.recorded())
    assert TrainingConfig(num_epochs=3).max_train_steps is None  # epochs alone decide the length
    assert TrainingConfig(eval_every=5).eval_metrics == ["fd_digits", "digits_scores"]
    assert TrainingConfig(reverse_variance="learned_range").loss_type == "hybrid"
    assert TrainingConfig(class_conditional=True).class_dropout_prob == 0.1


def test_the_command_line_and_a_config_file_set_what_they_name(tmp_path, capsys):
    argv = ["--learning_rate", "1e-4", "--no-use_ema", "--eval_metrics", "fid", "fd_dinov2"]
    config = TrainingConfig.from_command_line(argv)
    assert config == TrainingConfig(learning_rate=1e-4, use_ema=False, eval_metrics=["fid", "fd_dinov2"])
    (tmp_path / "run.json").write_text(json.dumps({"learning_rate": 1e-3, "seed": 3}))
    config = TrainingConfig.from_command_line(["--config", str(tmp_path / "run.json"), "--seed", "4"])
    assert (config.learning_rate, config.seed) == (1e-3, 4)  # a flag given as well overrides the file
    (tmp_path / "bad.json").write_text(json.dumps({"learning_rat": 1e-3, "seed": "4"}))
    with pytest.raises(ValueError, match=r"names unknown options \['learning_rat'\]"):
        TrainingConfig.from_command_line(["--config", str(tmp_path / "bad.json")])
    (tmp_path / "bad.json").write_text(json.dumps({"seed": "4"}))
    with pytest.raises(ValueError, match=r"--seed must be int, got '4'"):  # one line, as for a flag
        TrainingConfig.from_command_line(["--config", str(tmp_path / "bad.json")])
    with pytest.raises(SystemExit):
        TrainingConfig.from_command_line(["--variance_type", "fixed_large"])  # the old name is gone
    assert "unrecognized arguments: --variance_type" in capsys.readouterr().err


def test_a_distillation_has_no_objective_flags_and_checks_its_step_counts():
    with pytest.raises(SystemExit):
        ProgressiveDistillationConfig.from_command_line(["--teacher", "t", "--beta_schedule", "cosine"])
    with pytest.raises(ValueError, match=r"--teacher_steps \(48\) must be --final_steps \(1\) times a power of 2"):
        ProgressiveDistillationConfig(teacher="t", teacher_steps=48)
    rounds = ProgressiveDistillationConfig(teacher="t", teacher_steps=8, output_dir="d", hub_dry_run=True)
    assert [(r.output_dir, r.num_inference_steps, r.hub_dry_run) for r in rounds.rounds()] == [
        ("d/steps-4", 4, False),
        ("d/steps-2", 2, False),
        ("d/steps-1", 1, True),  # the last round alone is published
    ]
