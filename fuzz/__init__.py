"""Coverage-guided fuzzing of every reader of the project's files (docs/fuzzing.md).

    python -m fuzz --list                      # the targets
    python -m fuzz all --seconds 300           # each target in turn, with atheris (libFuzzer)
    python -m fuzz picture params --seconds 60
    python -m fuzz --replay                    # every committed corpus file through the oracle, no atheris

The rule each target checks (fuzz/oracle.py): any input gives a result, or the project's
error (a fmnist PipelineError) with a one-line message; never another exception, in
bounded time (libFuzzer's -timeout) and memory (-rss_limit_mb). The targets are listed in
one place, fuzz/targets.py; each starts from its committed seed corpus, fuzz/corpus/<target>/.
"""
