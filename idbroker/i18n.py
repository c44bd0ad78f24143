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
        "team_title": "Namens welk team werkt u?",
        "team_intro": "U zit in meer dan één team dat toegang heeft tot {client}. Kies het team "
                      "waarvoor u nu werkt; {client} ziet alleen dat team en uw rollen daarin. "
                      "Uw keuze wordt onthouden; u kunt hem later wijzigen.",
        "team_roles": "Rollen: {roles}",
        "team_current": "Huidige keuze",
        "team_not_member": "U bent nu geen lid van dat team. Kies een van de teams hieronder.",
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
        "err_attempt_busy": "Uw vorige poging wordt nog gecontroleerd. Ga terug en probeer het over "
                            "een paar seconden opnieuw.",
        "logout_title": "Uitloggen",
        "logout_confirm": "Wilt u uitloggen bij idbroker? U wordt dan uitgelogd voor alle "
                          "ketenapplicaties in deze browser.",
        "logout_button": "Uitloggen",
        "logged_out_title": "U bent uitgelogd",
        "logged_out_text": "U bent uitgelogd bij idbroker. U kunt dit venster sluiten.",
        # -- step-up, enrolment, authenticators (issue 4) --
        "stepup_title": "Extra controle",
        "stepup_intro": "{client} vraagt om inloggen op niveau {level}. Bevestig daarom dat u het "
                        "bent met uw eigen beveiligingsmiddel.",
        "stepup_intro_manage": "Bevestig met een van uw beveiligingsmiddelen dat u het bent; daarna "
                               "kunt u uw middelen wijzigen.",
        "stepup_use_webauthn": "Gebruik uw beveiligingssleutel of telefoon (aanbevolen)",
        "stepup_use_totp": "Gebruik een code uit uw authenticator-app",
        "stepup_cancel": "Annuleren en terug naar de applicatie",
        "stepup_cancel_manage": "Annuleren",
        "webauthn_title": "Bevestig met uw beveiligingssleutel",
        "webauthn_intro": "Druk op de knop en volg de aanwijzingen van uw browser: gebruik uw "
                          "vingerafdruk, gezicht of pincode.",
        "webauthn_button": "Bevestigen",
        "webauthn_cancelled": "U heeft de controle afgebroken of deze duurde te lang. "
                              "Probeer het opnieuw.",
        "webauthn_unsupported": "Deze browser ondersteunt geen beveiligingssleutels. Gebruik een "
                                "recente browser of een code uit uw authenticator-app.",
        "webauthn_failed": "Het bevestigen is niet gelukt. Probeer het opnieuw.",
        "totp_title": "Code uit uw authenticator-app",
        "totp_intro": "Open uw authenticator-app en typ de code van 6 cijfers die bij idbroker staat.",
        "totp_label": "Code van 6 cijfers",
        "totp_button": "Controleren",
        "other_means": "Een ander middel gebruiken",
        "activate_title": "Activeringscode",
        "activate_intro": "U heeft nog geen beveiligingsmiddel bij idbroker. Om er een te koppelen "
                          "heeft u een activeringscode nodig, die u van de beheerder van uw "
                          "organisatie krijgt. Zo kan iemand met alleen uw wachtwoord dat niet.",
        "activate_label": "Activeringscode (16 tekens)",
        "activate_button": "Code controleren",
        "activate_none": "Geen code? Vraag de beheerder van uw organisatie om een activeringscode.",
        "activate_person": "Uw kenmerk bij idbroker (voor de beheerder)",
        "enrol_title": "Beveiligingsmiddel koppelen",
        "enrol_intro": "Koppel een beveiligingsmiddel aan uw account. U gebruikt het voortaan bij "
                       "het inloggen voor applicaties die extra zekerheid vragen.",
        "enrol_webauthn": "Beveiligingssleutel of telefoon (aanbevolen)",
        "enrol_totp": "Authenticator-app met codes",
        "enrol_webauthn_title": "Beveiligingssleutel koppelen",
        "enrol_webauthn_intro": "Geef uw sleutel een naam en druk op de knop. Uw browser vraagt "
                                "daarna om uw vingerafdruk, gezicht of pincode.",
        "enrol_webauthn_button": "Sleutel koppelen",
        "enrol_name_label": "Naam (zodat u het middel later herkent)",
        "enrol_default_webauthn": "Beveiligingssleutel",
        "enrol_default_totp": "Authenticator-app",
        "enrol_totp_title": "Authenticator-app koppelen",
        "enrol_totp_intro": "Scan de QR-code met uw authenticator-app. Kunt u niet scannen, typ "
                            "dan deze sleutel over:",
        "enrol_totp_confirm": "Typ ter bevestiging de code die uw app nu toont.",
        "enrol_totp_restart": "Opnieuw beginnen met een nieuwe QR-code",
        "enrol_totp_button": "Koppelen",
        "qr_alt": "QR-code voor uw authenticator-app",
        "lockout_title": "Even geduld",
        "lockout_text": "Er zijn te veel mislukte pogingen gedaan. Om uw account te beschermen kunt u "
                        "het over {minutes} minuten opnieuw proberen.",
        "factors_title": "Mijn beveiligingsmiddelen",
        "factors_intro": "Dit zijn de middelen waarmee u bij idbroker bevestigt dat u het bent.",
        "factors_none": "U heeft nog geen beveiligingsmiddelen.",
        "factors_kind_webauthn": "Beveiligingssleutel",
        "factors_kind_totp": "Authenticator-app",
        "factors_added": "Toegevoegd",
        "factors_last_used": "Laatst gebruikt",
        "factors_never": "nog niet",
        "factors_rename": "Naam wijzigen",
        "factors_remove": "Verwijderen",
        "factors_remove_last": "Dit is uw laatste middel. Na verwijderen heeft u een nieuwe "
                               "activeringscode nodig.",
        "factors_add": "Middel toevoegen",
        "factors_confirm": "Bevestig eerst met een bestaand middel",
        "factors_confirm_text": "Wijzigen kan alleen vlak nadat u met een van uw middelen heeft "
                                "bevestigd dat u het bent.",
        "factors_changed": "Uw wijziging is opgeslagen.",
        "factors_login_needed": "Log eerst in via een ketenapplicatie; daarna kunt u hier uw "
                                "middelen beheren.",
        "err_stepup_other_person": "Deze controle hoort bij de inlogpoging van iemand anders en is "
                                   "daarom geweigerd. Begin opnieuw vanuit de applicatie.",
        "reason_wrong_code": "Die code klopt niet. Controleer de code en probeer het opnieuw.",
        "reason_code_expired": "Die code hoort bij een ander tijdstip. Controleer of de klok van uw "
                               "telefoon goed staat en probeer het met een nieuwe code.",
        "reason_replayed_code": "Deze code is al gebruikt. Wacht op de volgende code in uw app.",
        "reason_malformed_code": "Die code heeft niet de juiste vorm. Controleer wat u heeft getypt.",
        "reason_counter_regression": "Deze beveiligingssleutel lijkt gekopieerd en is daarom "
                                     "geweigerd. Neem contact op met de servicedesk.",
        "reason_wrong_origin": "Het antwoord van uw sleutel kwam niet van deze website en is "
                               "geweigerd.",
        "reason_wrong_rp_id": "Uw sleutel gebruikte een andere website-naam en is geweigerd.",
        "reason_wrong_type": "Het antwoord van uw sleutel was niet voor deze stap bedoeld.",
        "reason_wrong_challenge": "Het antwoord van uw sleutel hoorde bij een andere poging. "
                                  "Probeer het opnieuw.",
        "reason_challenge_unknown_or_used": "Deze poging is verlopen of al gebruikt. Probeer het "
                                            "opnieuw.",
        "reason_user_not_present": "Uw sleutel bevestigde niet dat u aanwezig was. Probeer het "
                                   "opnieuw.",
        "reason_user_not_verified": "Uw sleutel heeft uw vingerafdruk, gezicht of pincode niet "
                                    "gecontroleerd. Dat is verplicht.",
        "reason_bad_signature": "De handtekening van uw sleutel klopt niet.",
        "reason_unknown_credential": "Deze sleutel is niet aan uw account gekoppeld.",
        "reason_algorithm_not_allowed": "Deze sleutel gebruikt een methode die idbroker niet "
                                        "toestaat.",
        "reason_attestation_refused": "Dit type sleutel is niet toegestaan door uw organisatie.",
        "reason_already_registered": "Deze sleutel is al gekoppeld.",
        "reason_malformed_response": "Het antwoord van uw browser was onbruikbaar. Probeer het "
                                     "opnieuw.",
        "reason_cancelled": "U heeft de controle afgebroken of deze duurde te lang. Probeer het "
                            "opnieuw.",
        "reason_browser_error": "Uw browser meldde een fout. Probeer het opnieuw of gebruik een "
                                "ander middel.",
        "reason_activation_expired_or_used": "Deze activeringscode is verlopen, al gebruikt of "
                                             "ingetrokken. Vraag uw beheerder om een nieuwe.",
        "reason_locked_out": "Er zijn te veel mislukte pogingen gedaan. Probeer het later opnieuw.",
        "reason_other_person": "Deze code of poging hoort bij iemand anders en is geweigerd.",
        "reason_other_transaction": "Deze poging hoort bij een andere inlogpoging en is geweigerd.",
        "reason_unknown_factor": "Dat beveiligingsmiddel bestaat niet (meer).",
        "reason_too_many_factors": "U heeft het maximale aantal beveiligingsmiddelen.",
        "reason_bad_name": "Een naam heeft 1 tot 64 leesbare tekens.",
        "reason_has_factors": "U heeft al een beveiligingsmiddel. Een nieuw middel toevoegen kan "
                              "alleen nadat u met het bestaande heeft bevestigd.",
        "reason_activation_required": "Om een eerste beveiligingsmiddel te koppelen heeft u een "
                                      "activeringscode nodig.",
        "reason_step_up_required": "Bevestig eerst met een van uw bestaande middelen.",
        "level_low": "laag",
        "level_substantial": "substantieel",
        "level_high": "hoog",
    },
    "en": {
        "app_name": "idbroker",
        "skip_to_content": "Skip to content",
        "other_language": "Nederlands",
        "team_title": "Which team are you acting for?",
        "team_intro": "You are in more than one team with access to {client}. Choose the team you "
                      "are working for now; {client} sees only that team and your roles in it. "
                      "Your choice is remembered; you can change it later.",
        "team_roles": "Roles: {roles}",
        "team_current": "Current choice",
        "team_not_member": "You are not a member of that team now. Choose one of the teams below.",
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
        "err_attempt_busy": "Your previous attempt is still being checked. Go back and try again in "
                            "a few seconds.",
        "logout_title": "Sign out",
        "logout_confirm": "Do you want to sign out of idbroker? You will be signed out of all "
                          "chain applications in this browser.",
        "logout_button": "Sign out",
        "logged_out_title": "You are signed out",
        "logged_out_text": "You have signed out of idbroker. You can close this window.",
        # -- step-up, enrolment, authenticators (issue 4) --
        "stepup_title": "Extra check",
        "stepup_intro": "{client} asks for a sign-in at level {level}. Please confirm it is you "
                        "with your own security device.",
        "stepup_intro_manage": "Confirm it is you with one of your security devices; you can then "
                               "change your devices.",
        "stepup_use_webauthn": "Use your security key or phone (recommended)",
        "stepup_use_totp": "Use a code from your authenticator app",
        "stepup_cancel": "Cancel and return to the application",
        "stepup_cancel_manage": "Cancel",
        "webauthn_title": "Confirm with your security key",
        "webauthn_intro": "Press the button and follow your browser's instructions: use your "
                          "fingerprint, face or PIN.",
        "webauthn_button": "Confirm",
        "webauthn_cancelled": "You cancelled the check or it took too long. Please try again.",
        "webauthn_unsupported": "This browser does not support security keys. Use a recent browser "
                                "or a code from your authenticator app.",
        "webauthn_failed": "The check did not succeed. Please try again.",
        "totp_title": "Code from your authenticator app",
        "totp_intro": "Open your authenticator app and type the 6-digit code shown for idbroker.",
        "totp_label": "6-digit code",
        "totp_button": "Check",
        "other_means": "Use another device",
        "activate_title": "Activation code",
        "activate_intro": "You have no security device with idbroker yet. To link one you need an "
                          "activation code from your organisation's administrator, so that "
                          "someone with only your password cannot.",
        "activate_label": "Activation code (16 characters)",
        "activate_button": "Check code",
        "activate_none": "No code? Ask your organisation's administrator for an activation code.",
        "activate_person": "Your idbroker reference (for the administrator)",
        "enrol_title": "Link a security device",
        "enrol_intro": "Link a security device to your account. You will use it when signing in to "
                       "applications that need extra assurance.",
        "enrol_webauthn": "Security key or phone (recommended)",
        "enrol_totp": "Authenticator app with codes",
        "enrol_webauthn_title": "Link a security key",
        "enrol_webauthn_intro": "Give your key a name and press the button. Your browser will then "
                                "ask for your fingerprint, face or PIN.",
        "enrol_webauthn_button": "Link key",
        "enrol_name_label": "Name (so you recognise the device later)",
        "enrol_default_webauthn": "Security key",
        "enrol_default_totp": "Authenticator app",
        "enrol_totp_title": "Link an authenticator app",
        "enrol_totp_intro": "Scan the QR code with your authenticator app. If you cannot scan, "
                            "type in this key:",
        "enrol_totp_confirm": "To confirm, type the code your app shows now.",
        "enrol_totp_restart": "Start again with a new QR code",
        "enrol_totp_button": "Link",
        "qr_alt": "QR code for your authenticator app",
        "lockout_title": "Please wait",
        "lockout_text": "There were too many failed attempts. To protect your account, please try "
                        "again in {minutes} minutes.",
        "factors_title": "My security devices",
        "factors_intro": "These are the devices you use to confirm it is you at idbroker.",
        "factors_none": "You have no security devices yet.",
        "factors_kind_webauthn": "Security key",
        "factors_kind_totp": "Authenticator app",
        "factors_added": "Added",
        "factors_last_used": "Last used",
        "factors_never": "not yet",
        "factors_rename": "Rename",
        "factors_remove": "Remove",
        "factors_remove_last": "This is your last device. After removing it you need a new "
                               "activation code.",
        "factors_add": "Add a device",
        "factors_confirm": "First confirm with an existing device",
        "factors_confirm_text": "Changes are possible only shortly after you confirmed it is you "
                                "with one of your devices.",
        "factors_changed": "Your change has been saved.",
        "factors_login_needed": "First sign in through a chain application; you can then manage "
                                "your devices here.",
        "err_stepup_other_person": "This check belongs to someone else's sign-in and was refused. "
                                   "Start again from the application.",
        "reason_wrong_code": "That code is not correct. Check the code and try again.",
        "reason_code_expired": "That code belongs to another time. Check that your phone's clock is "
                               "right and try a new code.",
        "reason_replayed_code": "This code was already used. Wait for the next code in your app.",
        "reason_malformed_code": "That code does not have the right form. Check what you typed.",
        "reason_counter_regression": "This security key looks copied and was refused. Please "
                                     "contact the service desk.",
        "reason_wrong_origin": "Your key's answer did not come from this website and was refused.",
        "reason_wrong_rp_id": "Your key used another website name and was refused.",
        "reason_wrong_type": "Your key's answer was not meant for this step.",
        "reason_wrong_challenge": "Your key's answer belonged to another attempt. Please try again.",
        "reason_challenge_unknown_or_used": "This attempt expired or was already used. Please try "
                                            "again.",
        "reason_user_not_present": "Your key did not confirm you were present. Please try again.",
        "reason_user_not_verified": "Your key did not check your fingerprint, face or PIN. That is "
                                    "required.",
        "reason_bad_signature": "Your key's signature is not correct.",
        "reason_unknown_credential": "This key is not linked to your account.",
        "reason_algorithm_not_allowed": "This key uses a method idbroker does not allow.",
        "reason_attestation_refused": "Your organisation does not allow this type of key.",
        "reason_already_registered": "This key is already linked.",
        "reason_malformed_response": "Your browser's answer could not be used. Please try again.",
        "reason_cancelled": "You cancelled the check or it took too long. Please try again.",
        "reason_browser_error": "Your browser reported an error. Try again or use another device.",
        "reason_activation_expired_or_used": "This activation code has expired, was already used or "
                                             "was withdrawn. Ask your administrator for a new one.",
        "reason_locked_out": "There were too many failed attempts. Please try again later.",
        "reason_other_person": "This code or attempt belongs to someone else and was refused.",
        "reason_other_transaction": "This attempt belongs to another sign-in and was refused.",
        "reason_unknown_factor": "That security device does not exist (any more).",
        "reason_too_many_factors": "You have the maximum number of security devices.",
        "reason_bad_name": "A name has 1 to 64 readable characters.",
        "reason_has_factors": "You already have a security device. Adding another is possible only "
                              "after confirming with the existing one.",
        "reason_activation_required": "To link a first security device you need an activation code.",
        "reason_step_up_required": "First confirm with one of your existing devices.",
        "level_low": "low",
        "level_substantial": "substantial",
        "level_high": "high",
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
