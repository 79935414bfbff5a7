import pytest

from capbench.cap.config import CapConfig
from capbench.errors import CapbenchError


def test_defaults_are_the_authors_glue_script_values():
    cfg = CapConfig()
    assert cfg.modules == ("prc", "snc", "fic")
    assert (cfg.unsup, cfg.sup, cfg.representation) == (True, True, "pooler")
    assert (cfg.temperature, cfg.w_unsup, cfg.w_sup, cfg.w_ce, cfg.w_kd) == (0.1, 0.1, 10.0, 0.1, 0.9)
    assert (cfg.kd_temperature, cfg.extra_examples) == (2.0, 4096)
    assert (cfg.bank_dtype, cfg.bank_on_disk, cfg.normalization) == ("float16", False, "paper_code")


def test_structured_defaults():
    cfg = CapConfig.structured_defaults()
    assert (cfg.temperature, cfg.w_unsup, cfg.w_sup, cfg.kd_temperature) == (0.1, 0.3, 3.0, 1.0)
    assert cfg.snapshot_on == "pruning_step"
    assert CapConfig.structured_defaults(w_sup=1).w_sup == 1.0


def test_from_options_coerces_cli_strings_and_round_trips():
    cfg = CapConfig.from_options({"modules": "fic,prc", "sup": "false"})
    assert cfg.modules == ("prc", "fic") and cfg.sup is False
    cfg = CapConfig.from_options({"w-unsup": "0.3", "extra_examples": "512", "bank_on_disk": "yes"})
    assert (cfg.w_unsup, cfg.extra_examples, cfg.bank_on_disk) == (0.3, 512, True)
    assert CapConfig.from_options(cfg.to_dict()) == cfg
    assert cfg.to_dict()["modules"] == ["prc", "snc", "fic"]
    assert CapConfig(modules=("fic",), unsup=False).label() == "fic/sup/pooler"


@pytest.mark.parametrize(
    "options, match",
    [
        ({"tau": 0.1}, "unknown CAP option 'tau'.*temperature"),
        ({"modules": "prc,xyz"}, "unknown CAP module"),
        ({"representation": "cls-token"}, "representation"),
        ({"normalization": "simclr"}, "normalization"),
        ({"temperature": 0}, "temperature"),
        ({"w_sup": -1}, "w_sup"),
        ({"sup": "maybe"}, "true/false"),
        ({"extra_examples": "1.5"}, "integer"),
        ({"snapshot_on": "steps"}, "snapshot_interval"),
    ],
)
def test_bad_options_are_clear_errors(options, match):
    with pytest.raises(CapbenchError, match=match):
        CapConfig.from_options(options)


def test_snapshot_gap_is_in_the_spec_only_where_it_acts():
    from capbench.methods import cap_variant, method_spec

    structured = method_spec("cap_first_order", {}, True, {})[2]
    assert structured["snapshot_gap"] == "epoch"
    assert "snapshot_gap" not in method_spec("cap_movement", {}, True, {})[2]
    legacy = {k: v for k, v in structured.items() if k != "snapshot_gap"}  # a record from before the option
    assert cap_variant({"method": "cap_first_order", "cap": legacy}) == "snapshot_gap=none"
    assert cap_variant({"method": "cap_first_order", "cap": structured}) == ""
    every_step = method_spec("cap_first_order", {}, True, {"snapshot_gap": "none"})[2]
    assert every_step == legacy, "snapshot_gap=none reproduces the specs of records from before the option"
