"""Give the ``vetinh`` command: run, db upgrade, demo, user/token/client create, scheduler."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import FlaskGroup, with_appcontext
from sqlalchemy import select

from his.settings import Settings

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def _create_app() -> Flask:
    from his import create_app

    # Only a serving process runs the embedded scheduler: a one-off command (db upgrade,
    # demo, token create) must not start jobs, nor touch tables before they are migrated.
    context = click.get_current_context(silent=True)
    command = context.find_root().invoked_subcommand if context else None
    if command != "run":
        return create_app(scheduler_enabled=False)
    return create_app()


def _settings() -> Settings:
    settings: Settings = current_app.extensions["vetinh.settings"]
    return settings


# Commands that contexts add to the app (blueprint CLI commands), with their one-line help.
# ``vetinh --help`` lists them from here instead of building the whole app, which imports
# every context (PDF fonts, aiortc, OpenSlide) and took seconds; running one still loads it.
APP_COMMANDS: dict[str, str] = {
    "import-drugs": "Add or update drugs of the catalogue from a CSV file.",
    "import-signing-key": "Give a doctor or pharmacist a key and certificate from a real CA.",
    "media": "Run the media service (aiortc echo peers) as its own process.",
    "send-prescriptions": "Send the signed prescriptions waiting in the outbox once.",
    "verify": "Verify a signed record by Provenance id, encounter id or prescription code.",
}


class VetinhGroup(FlaskGroup):
    """The ``vetinh`` command; its help is written without loading the app."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List our own commands and the app's known ones, without building the app."""
        rows: list[tuple[str, str]] = []
        for name in sorted({*self.commands, *APP_COMMANDS}):
            command = self.commands.get(name)
            if command is not None:
                if command.hidden:
                    continue
                rows.append((name, command.get_short_help_str(formatter.width - 6 - len(name))))
            else:
                rows.append((name, APP_COMMANDS[name]))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


main = VetinhGroup(
    name="vetinh",
    create_app=_create_app,
    add_default_commands=False,
    add_version_option=False,
    set_debug_flag=False,
    load_dotenv=False,
    help="Vệ Tinh hospital information system.",
)


@main.command("run")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=5000, show_default=True, type=int, help="Port to listen on.")
@click.option("--threads", default=16, show_default=True, type=int, help="Worker threads.")
@with_appcontext
def run_command(host: str, port: int, threads: int) -> None:
    """Serve the application with waitress (the embedded default)."""
    from waitress import serve

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    click.echo(f"Vệ Tinh is serving on http://{host}:{port}/")
    serve(app, host=host, port=port, threads=threads, channel_timeout=300, ident="vetinh")


@main.group("db")
def db_group() -> None:
    """Manage the database schema."""


def alembic_config(database_url: str):  # type: ignore[no-untyped-def]
    """Return the Alembic configuration for our migrations and this database."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade_database(database_url: str) -> None:
    """Bring the database to the newest schema of every context."""
    from alembic import command

    command.upgrade(alembic_config(database_url), "heads")


@db_group.command("upgrade")
@with_appcontext
def db_upgrade() -> None:
    """Migrate the database to the newest schema."""
    upgrade_database(_settings().database_url)
    click.echo("Database is up to date.")


@main.command("demo")
@click.option("--if-empty", is_flag=True, help="Load only when the database has no users.")
@click.option(
    "--password", default=None, help="Give every demo account this password instead of random ones."
)
@with_appcontext
def demo_command(if_empty: bool, password: str | None) -> None:
    """Load the demo data once: sites, a user for every role, patients, catalogues."""
    from his import demo

    with current_app.extensions["vetinh.db"].session_scope() as session:
        if demo.already_loaded(session):
            click.echo("Demo data is already loaded." if not if_empty else "Database already has data.")
            return
        passwords = demo.load(session, current_app, password=password)
    click.echo("Demo data loaded. Sign in with these accounts (shown only this once):")
    for username, password in passwords:
        click.echo(f"  {username:<28} {password}")


@main.group("user")
def user_group() -> None:
    """Manage user accounts."""


@user_group.command("create")
@click.option("--username", required=True)
@click.option("--role", required=True, type=click.Choice(sorted(__import__("his.models").models.ROLES)))
@click.option("--full-name", required=True)
@click.option("--site", "site_code", help="Site code (required for staff).")
@click.option("--password", help="Leave out to be asked, or to generate one with --generate.")
@click.option("--generate", is_flag=True, help="Generate a random password and print it.")
@with_appcontext
def user_create(
    username: str, role: str, full_name: str, site_code: str | None, password: str | None, generate: bool
) -> None:
    """Create a user account."""
    from his.accounts import NewUser, create_user
    from his.errors import VetinhError

    if generate:
        password = secrets.token_urlsafe(12)
    elif not password:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        with current_app.extensions["vetinh.db"].session_scope() as session:
            user = create_user(
                session,
                NewUser(
                    username=username,
                    password=password or "",
                    full_name=full_name,
                    role=role,
                    site_code=site_code,
                ),
            )
            click.echo(f"Created {user.role} {user.username}.")
    except VetinhError as exc:
        details = "; ".join(f"{k}: {v}" for k, v in exc.fields.items())
        raise click.ClickException(f"{exc.message} {details}".strip()) from exc
    if generate:
        click.echo(f"Password: {password}")


@main.group("token")
def token_group() -> None:
    """Manage API tokens."""


@token_group.command("create")
@click.option("--user", "username", required=True, help="The user the token acts for.")
@click.option("--scope", default=None, help='SMART scopes, e.g. "user/*.read"; default: the role\'s.')
@click.option("--ttl", default=None, type=int, help="Lifetime in seconds.")
@with_appcontext
def token_create(username: str, scope: str | None, ttl: int | None) -> None:
    """Print a bearer token for scripts."""
    from his.accounts import default_scope, issue_token, narrow_scope
    from his.errors import VetinhError
    from his.models import User

    settings = _settings()
    try:
        with current_app.extensions["vetinh.db"].session_scope() as session:
            user = session.scalar(select(User).where(User.username == username))
            if user is None or not user.active:
                raise click.ClickException(f"No active user named {username!r}.")
            granted = narrow_scope(scope, default_scope(user.role))
            token, _row = issue_token(
                session, user=user, scope=granted, ttl_seconds=ttl or settings.token_ttl_seconds
            )
    except VetinhError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(token)


@main.group("client")
def client_group() -> None:
    """Manage system clients (client-credentials access)."""


@client_group.command("create")
@click.option("--client-id", required=True)
@click.option("--name", required=True)
@click.option("--scope", default="system/*.read", show_default=True)
@click.option("--site", "site_code", default=None)
@with_appcontext
def client_create(client_id: str, name: str, scope: str, site_code: str | None) -> None:
    """Register a client and print its secret once."""
    from his.accounts import create_client
    from his.errors import VetinhError

    try:
        with current_app.extensions["vetinh.db"].session_scope() as session:
            _client, secret = create_client(
                session, client_id=client_id, name=name, scope=scope, site_code=site_code
            )
    except VetinhError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"client_id: {client_id}")
    click.echo(f"client_secret: {secret}")


@main.command("scheduler")
@with_appcontext
def scheduler_command() -> None:
    """Run the job scheduler as its own process (production)."""
    from his import jobs

    jobs.run_scheduler(current_app._get_current_object())  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(main())
