"""``python -m companion.env`` prints the environment report."""

from .device import env_report

if __name__ == "__main__":
    print(env_report())
