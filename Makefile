# The two commands a new user needs: `make demo` and `make test`.
.PHONY: setup demo test clean

ENGINE ?= horovod

setup:
	@ENGINE=$(ENGINE) bash scripts/setup.sh

demo: setup
	@.venv/bin/harness run jobs/lensfinder_cnn.yaml --np 2

# The suite runs the engine-specific tests on both engines: it needs both environments, and
# PostgreSQL for the lab tracking server's tests.
test: setup
	@ENGINE=tf WITH_POSTGRES=1 bash scripts/setup.sh
	@bash scripts/test.sh

clean:
	rm -rf .venv .venv-tf runs mlflow.db mlartifacts .pytest_cache
