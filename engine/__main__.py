from engine.cli import run_process

run_process()
