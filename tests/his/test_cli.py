"""The vetinh command: demo data once, user creation, database upgrade."""

from __future__ import annotations

from sqlalchemy import func, select

from his.cli import main, upgrade_database
from his.db import get_database
from his.models import ROLES, Site, User
from tests.conftest import login


def test_demo_loads_once_with_every_role_at_both_sites(app, test_database):
    runner = app.test_cli_runner()
    first = runner.invoke(main, ["demo", "--if-empty", "--password", "demo-pass-123"])
    assert first.exit_code == 0, first.output
    assert "central.doctor" in first.output
    with get_database(app).session_scope() as db:
        users = {u.username: u for u in db.scalars(select(User))}
        sites = {s.code: s.kind for s in db.scalars(select(Site))}
    assert sites == {"DIST": "district", "CENT": "central"}
    for role in ROLES:
        if role == "patient":
            assert users["patient"].patient_id
            continue
        assert users[role].role == role
        assert users[f"central.{role}"].role == role
        assert users[role].site_id != users[f"central.{role}"].site_id
    again = runner.invoke(main, ["demo", "--if-empty"])
    assert again.exit_code == 0
    assert "already" in again.output
    with get_database(app).session_scope() as db:
        assert db.scalar(select(func.count()).select_from(User)) == len(users)
    client = app.test_client()
    assert login(client, "patient", "demo-pass-123").status_code == 302
    me = client.get("/api/v1/me").get_json()
    patient = client.get(f"/api/v1/patients/{me['patient_id']}").get_json()
    assert patient["full_name"] == "Nguyễn Văn An"


def test_user_create_refuses_a_staff_user_without_site(app, sites):
    runner = app.test_cli_runner()
    bad = runner.invoke(
        main,
        [
            "user",
            "create",
            "--username",
            "x",
            "--role",
            "doctor",
            "--full-name",
            "X",
            "--password",
            "long-enough",
        ],
    )
    assert bad.exit_code != 0
    assert "site" in bad.output
    good = runner.invoke(
        main,
        [
            "user",
            "create",
            "--username",
            "x",
            "--role",
            "doctor",
            "--full-name",
            "X",
            "--site",
            "CENT",
            "--generate",
        ],
    )
    assert good.exit_code == 0, good.output
    assert "Password:" in good.output


def test_db_upgrade_is_idempotent(test_database):
    upgrade_database(test_database.url)
    upgrade_database(test_database.url)


def test_help_lists_every_command_without_building_the_app(app):
    import subprocess
    import sys

    from his.cli import APP_COMMANDS

    with app.app_context():
        app_commands = set(app.cli.list_commands(None))  # type: ignore[arg-type]
    assert app_commands == set(APP_COMMANDS), "APP_COMMANDS must name the commands the contexts add"
    probe = (
        "import sys\n"
        "from his.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('LOADED', sorted(m for m in ('billing.views', 'telehealth.views', 'fpdf') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    for name in [*APP_COMMANDS, "run", "db", "demo", "scheduler", "user", "token", "client"]:
        assert f"  {name} " in result.stdout, name
    assert "LOADED []" in result.stdout
