from videodiff.cli import run

run()
