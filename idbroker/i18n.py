"""Page texts in Dutch (the default) and English.

A plain table keeps every text reviewable in one place; the language comes from the
client's ``ui_locales``, the person's own choice (``?lang=``, remembered in a cookie),
or the browser's Accept-Language — in that order.
"""

from __future__ import annotations

from collections.abc import Iterable

LOCALES = ("nl", "en")

MESSAGES: dict[str, dict[str, str]] = {
    "nl": {
        "app_name": "idbroker",
        "skip_to_content": "Naar de inhoud",
        "other_language": "English",
        "choose_title": "Kies uw organisatie",
        "choose_intro": "U logt in voor {client}. Kies de organisatie waarvoor u werkt; "
                        "u logt daarna in bij uw eigen organisatie.",
        "choose_remembered": "Laatst gebruikt",
        "choose_none": "Er zijn geen organisaties ingesteld.",
        "error_title": "Inloggen is niet gelukt",
        "error_back": "Ga terug naar de applicatie en probeer het opnieuw. Blijft het "
                      "misgaan, neem dan contact op met de servicedesk van uw organisatie.",
        "error_reference": "Referentie voor de servicedesk",
        "err_invalid_client": "De applicatie die u hierheen stuurde is niet bekend bij idbroker.",
        "err_invalid_redirect": "De applicatie vroeg om terug te sturen naar een adres dat niet "
                                "voor haar is geregistreerd. Om u te beschermen gaan we daar niet heen.",
        "err_invalid_request": "De inlogaanvraag van de applicatie is niet geldig.",
        "err_login_expired": "Deze inlogpoging is verlopen of hoort bij een ander "
                             "browservenster. Begin opnieuw vanuit de applicatie.",
        "err_unknown_organisation": "Die organisatie is niet bekend.",
        "err_upstream_unreachable": "De inlogdienst van {organisation} is nu niet bereikbaar. "
                                    "Probeer het over enkele minuten opnieuw; lukt het dan nog "
                                    "niet, meld het bij de servicedesk van {organisation}.",
        "err_upstream_denied": "{organisation} heeft het inloggen niet toegestaan of u heeft "
                               "het afgebroken. Probeer het opnieuw of neem contact op met de "
                               "servicedesk van {organisation}.",
        "err_upstream_invalid": "Het antwoord van de inlogdienst van {organisation} klopte niet "
                                "en is om veiligheidsredenen geweigerd. Meld dit bij de "
                                "servicedesk van {organisation}.",
        "err_unavailable": "idbroker is tijdelijk niet beschikbaar. Probeer het over enkele "
                           "minuten opnieuw.",
        "err_not_found": "Deze pagina bestaat niet.",
        "err_method": "Deze pagina kan zo niet worden opgevraagd.",
        "err_internal": "Er ging iets mis bij idbroker. Probeer het opnieuw.",
        "err_csrf": "Het formulier is verlopen. Laad de pagina opnieuw en probeer het nog eens.",
        "logout_title": "Uitloggen",
        "logout_confirm": "Wilt u uitloggen bij idbroker? U wordt dan uitgelogd voor alle "
                          "ketenapplicaties in deze browser.",
        "logout_button": "Uitloggen",
        "logged_out_title": "U bent uitgelogd",
        "logged_out_text": "U bent uitgelogd bij idbroker. U kunt dit venster sluiten.",
    },
    "en": {
        "app_name": "idbroker",
        "skip_to_content": "Skip to content",
        "other_language": "Nederlands",
        "choose_title": "Choose your organisation",
        "choose_intro": "You are signing in to {client}. Choose the organisation you work "
                        "for; you will then sign in with your own organisation.",
        "choose_remembered": "Last used",
        "choose_none": "No organisations are configured.",
        "error_title": "Sign-in failed",
        "error_back": "Go back to the application and try again. If it keeps failing, "
                      "contact your organisation's service desk.",
        "error_reference": "Reference for the service desk",
        "err_invalid_client": "The application that sent you here is not known to idbroker.",
        "err_invalid_redirect": "The application asked to return to an address that is not "
                                "registered for it. To protect you, we will not go there.",
        "err_invalid_request": "The application's sign-in request is not valid.",
        "err_login_expired": "This sign-in attempt has expired or belongs to another browser "
                             "window. Start again from the application.",
        "err_unknown_organisation": "That organisation is not known.",
        "err_upstream_unreachable": "The sign-in service of {organisation} cannot be reached "
                                    "right now. Try again in a few minutes; if it still fails, "
                                    "report it to the service desk of {organisation}.",
        "err_upstream_denied": "{organisation} did not allow the sign-in, or you cancelled it. "
                               "Try again or contact the service desk of {organisation}.",
        "err_upstream_invalid": "The answer from the sign-in service of {organisation} was not "
                                "correct and was refused for your safety. Please report this to "
                                "the service desk of {organisation}.",
        "err_unavailable": "idbroker is temporarily unavailable. Try again in a few minutes.",
        "err_not_found": "This page does not exist.",
        "err_method": "This page cannot be requested this way.",
        "err_internal": "Something went wrong in idbroker. Please try again.",
        "err_csrf": "The form has expired. Reload the page and try again.",
        "logout_title": "Sign out",
        "logout_confirm": "Do you want to sign out of idbroker? You will be signed out of all "
                          "chain applications in this browser.",
        "logout_button": "Sign out",
        "logged_out_title": "You are signed out",
        "logged_out_text": "You have signed out of idbroker. You can close this window.",
    },
}


def choose_locale(*candidates: str | None, accept: Iterable[str] = (), default: str = "nl") -> str:
    """First supported locale among explicit candidates (each may be a space-separated
    ``ui_locales`` list), then the browser's preferences, then the default."""
    for candidate in candidates:
        for tag in (candidate or "").split():
            base = tag.split("-")[0].lower()
            if base in LOCALES:
                return base
    for tag in accept:
        base = tag.split("-")[0].lower()
        if base in LOCALES:
            return base
    return default


def translate(locale: str, key: str, **values: str) -> str:
    text = MESSAGES.get(locale, MESSAGES["nl"]).get(key) or MESSAGES["nl"][key]
    return text.format(**values) if values else text
