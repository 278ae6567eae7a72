"""Users of the team's tracking server and what each may do, through MLflow's auth REST API
(`/api/2.0/mlflow/users/create`, `/api/3.0/mlflow/users/permissions/grant`), as its admin:

    export MLFLOW_TRACKING_URI=http://tracking:5000
    export MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD=...   # the admin's
    python -m digits.tools.server user add alice --role logger --password-file alice.pw
    python -m digits.tools.server user role alice --role registrar

Reading, logging runs and the model registry are granted separately: a reader reads runs and
models; a logger also creates and logs runs in every experiment; only a registrar also
registers model versions and moves aliases (`@champion`). New users start with no permission.
"""

from __future__ import annotations

import argparse
import enum
import os
import secrets as tokens
import warnings
from dataclasses import dataclass
from pathlib import Path

from digits import PipelineError
from digits.lib.config import MLflowConfig
from digits.lib.secrets import read_private_file, redact_text, remember, write_private_file
from digits.lib.tracking.access import explain_denied


class Role(enum.Enum):
    READER = "reader"
    LOGGER = "logger"
    REGISTRAR = "registrar"


@dataclass(frozen=True)
class Grants:
    """MLflow permissions on every experiment and every registered model ("*")."""

    experiments: str
    registered_models: str


ROLES = {
    Role.READER: Grants(experiments="READ", registered_models="READ"),
    Role.LOGGER: Grants(experiments="EDIT", registered_models="READ"),
    # EDIT on a registered model is what creating versions and setting aliases need
    Role.REGISTRAR: Grants(experiments="EDIT", registered_models="EDIT"),
}


def grant(client, name: str, role: Role) -> None:
    """Give `name` exactly `role`'s permissions on every experiment and registered model."""
    from mlflow.exceptions import MlflowException

    grants = ROLES[role]
    for kind, permission in (
        ("experiment", grants.experiments),
        ("registered_model", grants.registered_models),
    ):
        try:
            client.grant_user_permission(name, kind, "*", permission)
        except MlflowException as err:  # `user role`: the old grant goes first
            if getattr(err, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
                raise
            client.revoke_user_permission(name, kind, "*")
            client.grant_user_permission(name, kind, "*", permission)


def ensure_team_resources(uri: str, experiment: str, model: str) -> None:
    """Create the team's experiment and registered model as the admin's, if missing: whoever
    creates one manages it, so a reader must not be the first to make the experiment (and log
    into it), nor a logger the first to register the model."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=uri)
    if client.get_experiment_by_name(experiment) is None:
        client.create_experiment(experiment)
    try:
        client.get_registered_model(model)
    except MlflowException as err:
        if getattr(err, "error_code", None) != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(model)


def user_password(path: Path) -> tuple[str, bool]:
    """The new user's password from the 0600 file `path`, or a fresh one written there;
    (password, whether it was made here)."""
    if path.exists():
        return read_private_file(path).strip(), False
    password = tokens.token_urlsafe(18)
    remember(password)
    write_private_file(path, password + "\n")
    return password, True


def run(args: argparse.Namespace) -> None:
    """`user add` or `user role`, as the admin named by MLflow's environment variables."""
    with warnings.catch_warnings():  # importing the client imports MLflow's server app
        warnings.simplefilter("ignore")
        from mlflow.server.auth.client import AuthServiceClient

    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")) or not os.environ.get(
        "MLFLOW_TRACKING_USERNAME"
    ):
        raise PipelineError(
            "managing users needs the server and its admin: export MLFLOW_TRACKING_URI="
            "http://HOST:PORT MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD=..."
        )
    shown, role = redact_text(uri), Role(args.role)
    client = AuthServiceClient(uri)
    with explain_denied(shown, "manage users"):
        ensure_team_resources(uri, args.experiment, args.model)
        if args.action == "add":
            password, made = user_password(args.password_file)
            add_user(client, args.name, password, shown)
        grant(client, args.name, role)
    print(f"user {args.name!r} on {shown}: {role.value} ({ROLES[role]})")
    if args.action == "add":
        where = f"{args.password_file} (mode 0600{', new' if made else ''})"
        print(
            f"its password is in {where}: hand it to {args.name} privately; they set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or ~/.mlflow/credentials, "
            "mode 0600)"
        )


def add_user(client, name: str, password: str, shown: str) -> None:
    """Create user `name`; an existing one is an error that names `user role`."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_user(name, password)
    except MlflowException as err:
        if getattr(err, "error_code", None) == "RESOURCE_ALREADY_EXISTS":
            raise PipelineError(
                f"user {name!r} already exists on {shown}; change what they may do with "
                f"`python -m digits.tools.server user role {name} --role ROLE`"
            ) from None
        if getattr(err, "error_code", None) == "INVALID_PARAMETER_VALUE":
            raise PipelineError(f"cannot create user {name!r}: {err.message}") from None
        raise


def add_parser(commands) -> None:
    """The `user` subcommand of `python -m digits.tools.server`."""
    user = commands.add_parser("user", help="add a user of the tracking server, or change a role")
    actions = user.add_subparsers(dest="action", required=True)
    roles = [r.value for r in Role]
    add = actions.add_parser("add", help="create a user with a role")
    add.add_argument("name", help="the user's name (what they set as MLFLOW_TRACKING_USERNAME)")
    add.add_argument("--role", choices=roles, required=True, help="what the user may do")
    add.add_argument(
        "--password-file",
        type=Path,
        required=True,
        help="a 0600 file with the user's password; made, with a random one, if missing",
    )
    role = actions.add_parser("role", help="give an existing user another role")
    role.add_argument("name", help="an existing user's name")
    role.add_argument("--role", choices=roles, required=True, help="what the user may do")
    for sub in (add, role):
        sub.add_argument(
            "--experiment",
            default=MLflowConfig().experiment,
            help="the team's experiment, created as the admin's if missing",
        )
        sub.add_argument(
            "--model",
            default=MLflowConfig().registered_model,
            help="the team's registered model, created as the admin's if missing",
        )
