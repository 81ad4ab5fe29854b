"""The control panel: a persistent message of buttons and a select that keep working after the
bot or the whole swarm restarts (fixed ``custom_id``s, ``timeout=None``, registered with
``add_view`` on every start), and the modals and confirmations it opens.

Every callback asks the policy again, at click or submit time: the role a user had when the
panel was posted, or when a modal was opened, is not the role they have now.
"""
from __future__ import annotations

import discord

from actors.discord.actions import PRIORITIES, ActionFailed, Reply, principal_of


def panel_embed() -> discord.Embed:
    return discord.Embed(title="Swarm control panel", description=(
        "Status and queue for everyone; messages for operators; restarts and reloads for "
        "admins. Answers are shown only to you."))


async def answer(interaction: discord.Interaction, reply: Reply) -> None:
    """Reply to an interaction privately, as its first response or as a follow-up."""
    kwargs = {"ephemeral": True, **({"embed": reply.embed} if reply.embed else {})}
    if interaction.response.is_done():
        await interaction.followup.send(reply.content, **kwargs)
    else:
        await interaction.response.send_message(reply.content, **kwargs)


async def allowed(interaction: discord.Interaction, command: str, via: str) -> bool:
    decision = interaction.client.authorize(interaction.user, command, via=via,
                                            where=interaction.guild)
    if not decision.allowed:
        await answer(interaction, Reply(decision.refusal(command)))
    return decision.allowed


async def run(interaction: discord.Interaction, action, *args) -> None:
    """Acknowledge within Discord's 3 s, then follow up with the admin's answer."""
    await interaction.response.defer(ephemeral=True, thinking=True)
    try:
        reply = await action(principal_of(interaction.user), *args)
    except ActionFailed as exc:
        reply = Reply(str(exc))
    await answer(interaction, reply)


async def on_error(interaction: discord.Interaction, error: Exception, what: str) -> None:
    interaction.client.bridge.log("error", "interaction_error", f"{what}: "
                                  f"{type(error).__name__}: {error}", exc=error,
                                  user_id=str(interaction.user.id))
    try:
        await answer(interaction, Reply("Something went wrong on our side; it is logged."))
    except discord.HTTPException:
        pass  # the interaction expired meanwhile: the log line is what remains


class ControlPanel(discord.ui.View):
    def __init__(self, services: tuple[str, ...]):
        super().__init__(timeout=None)
        options = [discord.SelectOption(label=s, value=s) for s in services[:25]]
        if options:
            self.restart_select.options = options
        else:
            self.remove_item(self.restart_select)

    async def on_error(self, interaction, error, item) -> None:
        await on_error(interaction, error, f"panel {item.custom_id}")

    @discord.ui.button(label="Status", style=discord.ButtonStyle.primary,
                       custom_id="swarm:panel:status", row=0)
    async def status_button(self, interaction: discord.Interaction, _) -> None:
        if await allowed(interaction, "status", "button"):
            await run(interaction, interaction.client.actions.status)

    @discord.ui.button(label="Agents", custom_id="swarm:panel:agents", row=0)
    async def agents_button(self, interaction: discord.Interaction, _) -> None:
        if await allowed(interaction, "agents", "button"):
            await run(interaction, interaction.client.actions.agents_view)

    @discord.ui.button(label="Queue", custom_id="swarm:panel:queue", row=0)
    async def queue_button(self, interaction: discord.Interaction, _) -> None:
        if await allowed(interaction, "queue", "button"):
            await run(interaction, interaction.client.actions.queue)

    @discord.ui.button(label="Message agent", style=discord.ButtonStyle.success,
                       custom_id="swarm:panel:message", row=1)
    async def message_button(self, interaction: discord.Interaction, _) -> None:
        if await allowed(interaction, "message", "button"):
            await interaction.response.send_modal(MessageModal())

    @discord.ui.button(label="Broadcast", style=discord.ButtonStyle.success,
                       custom_id="swarm:panel:broadcast", row=1)
    async def broadcast_button(self, interaction: discord.Interaction, _) -> None:
        if await allowed(interaction, "broadcast", "button"):
            await interaction.response.send_modal(BroadcastModal())

    @discord.ui.button(label="Unstall agent", custom_id="swarm:panel:unstall", row=1)
    async def unstall_button(self, interaction: discord.Interaction, _) -> None:
        if await allowed(interaction, "unstall", "button"):
            await interaction.response.send_modal(UnstallModal())

    @discord.ui.select(placeholder="Restart a service…", custom_id="swarm:panel:restart",
                       options=[discord.SelectOption(label="-", value="-")], row=2)
    async def restart_select(self, interaction: discord.Interaction,
                             select: discord.ui.Select) -> None:
        if not await allowed(interaction, "restart", "select"):
            return
        service = select.values[0]
        confirm = discord.ui.View(timeout=None)
        confirm.add_item(RestartConfirm(service))
        await interaction.response.send_message(f"Restart **{service}**?", view=confirm,
                                                ephemeral=True)

    @discord.ui.button(label="Reload config", style=discord.ButtonStyle.danger,
                       custom_id="swarm:panel:reload", row=3)
    async def reload_button(self, interaction: discord.Interaction, _) -> None:
        if await allowed(interaction, "reload", "button"):
            await run(interaction, interaction.client.actions.reload)


class RestartConfirm(discord.ui.DynamicItem[discord.ui.Button],
                     template=r"swarm:restart:(?P<service>[a-z][a-z0-9_]{0,60})"):
    """The confirm button; the service travels in its custom_id, so it works after a restart."""

    def __init__(self, service: str):
        super().__init__(discord.ui.Button(label=f"Restart {service}",
                                           style=discord.ButtonStyle.danger,
                                           custom_id=f"swarm:restart:{service}"))
        self.service = service

    @classmethod
    async def from_custom_id(cls, interaction, item, match) -> RestartConfirm:
        return cls(match["service"])

    async def callback(self, interaction: discord.Interaction) -> None:
        if await allowed(interaction, "restart", "button"):
            await run(interaction, interaction.client.actions.restart, self.service)


class _Modal(discord.ui.Modal):
    command = ""

    def __init__(self) -> None:
        super().__init__(custom_id=f"swarm:modal:{self.command}", timeout=900)

    async def on_error(self, interaction, error) -> None:
        await on_error(interaction, error, f"modal {self.custom_id}")

    async def on_submit(self, interaction: discord.Interaction) -> None:
        if await allowed(interaction, self.command, "modal"):
            await self.act(interaction)

    async def act(self, interaction: discord.Interaction) -> None:
        raise NotImplementedError


def _priority(field: discord.ui.TextInput) -> str | None:
    value = field.value.strip().lower()
    return value or None


class MessageModal(_Modal, title="Message an agent"):
    command = "message"
    agent = discord.ui.TextInput(label="Agent", custom_id="agent", max_length=64)
    text = discord.ui.TextInput(label="Message", custom_id="text",
                                style=discord.TextStyle.paragraph, max_length=4000)
    priority = discord.ui.TextInput(label="Priority (" + ", ".join(PRIORITIES) + ")",
                                    custom_id="priority", required=False, max_length=10)

    async def act(self, interaction: discord.Interaction) -> None:
        await run(interaction, interaction.client.actions.message, self.agent.value.strip(),
                  self.text.value, _priority(self.priority))


class BroadcastModal(_Modal, title="Broadcast to every agent"):
    command = "broadcast"
    text = discord.ui.TextInput(label="Message", custom_id="text",
                                style=discord.TextStyle.paragraph, max_length=4000)
    priority = discord.ui.TextInput(label="Priority (" + ", ".join(PRIORITIES) + ")",
                                    custom_id="priority", required=False, max_length=10)

    async def act(self, interaction: discord.Interaction) -> None:
        await run(interaction, interaction.client.actions.broadcast, self.text.value,
                  _priority(self.priority))


class UnstallModal(_Modal, title="Unstall an agent"):
    command = "unstall"
    agent = discord.ui.TextInput(label="Agent", custom_id="agent", max_length=64)

    async def act(self, interaction: discord.Interaction) -> None:
        await run(interaction, interaction.client.actions.unstall, self.agent.value.strip())
