from aapp.provenance import machine, script_command


def test_script_command_quotes_what_the_shell_would_split():
    assert script_command("ppl_sweep", ["--ratios", "0.3", "--text", "my prose.txt"]) == (
        "python scripts/ppl_sweep.py --ratios 0.3 --text 'my prose.txt'")


def test_machine_names_the_versions_that_decide_speed():
    facts = machine()
    assert {"cpu", "cores", "threads", "torch", "transformers"} <= set(facts)
    assert facts["cpu"] and facts["threads"] >= 1
