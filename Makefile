# The two commands a new user needs: `make demo` and `make test`.
.PHONY: setup demo test clean

setup:
	@bash scripts/setup.sh

demo: setup
	@.venv/bin/harness run jobs/lensfinder_cnn.yaml --np 2

test: setup
	@bash scripts/test.sh

clean:
	rm -rf .venv runs mlflow.db mlartifacts .pytest_cache
