// The page's own words, in English and Dutch. The bot's questions come from
// the bot in the language the visitor picks there.

export const TEXTS = {
  en: {
    title: "Chat",
    exit: "Leave quickly",
    other: "Nederlands",
    startTitle: "Talk with someone",
    startText:
      "Anonymous and free. You don't need an account or a name, and this page keeps nothing on your device.",
    start: "Start a chat",
    exitHint: 'Press "Leave quickly", or Escape twice, to leave this page at once.',
    historyHint:
      "Could someone else check this device? Use a private window, and delete this site from the browser's history afterwards.",
    logLabel: "Conversation",
    choicesLabel: "Answers",
    textLabel: "Your message",
    send: "Send",
    you: "You",
    assistant: "Assistant",
    counsellor: "Counsellor",
    connecting: "Connecting…",
    intake: "A few short questions first. Then a counsellor will talk with you.",
    waiting: "Waiting for a counsellor. Please keep this page open.",
    waitingAt: "Waiting for a counsellor: you are number {n} in line. Please keep this page open.",
    counsellorHere: "A counsellor is here.",
    counsellorLeft: "The counsellor has left. Please wait.",
    ended:
      "The chat has ended. You can close this page. If someone could check this device, delete this site from the browser's history.",
    offline: "No connection. Your messages will be sent when it is back.",
    notSent: "Not sent yet. It will be sent when the connection is back.",
    busy: "It is very busy right now. Please try again in a minute.",
    failed: "The chat could not be started. Please try again in a moment.",
    newChat: "Start a new chat",
  },
  nl: {
    title: "Chat",
    exit: "Snel weg",
    other: "English",
    startTitle: "Praat met iemand",
    startText:
      "Anoniem en gratis. Je hebt geen account of naam nodig, en deze pagina bewaart niets op je apparaat.",
    start: "Start een chat",
    exitHint: 'Druk op "Snel weg", of twee keer op Escape, om deze pagina meteen te verlaten.',
    historyHint:
      "Kan iemand anders op dit apparaat meekijken? Gebruik een privévenster, en wis deze site daarna uit de geschiedenis van je browser.",
    logLabel: "Gesprek",
    choicesLabel: "Antwoorden",
    textLabel: "Je bericht",
    send: "Stuur",
    you: "Jij",
    assistant: "Assistent",
    counsellor: "Hulpverlener",
    connecting: "Verbinden…",
    intake: "Eerst een paar korte vragen. Daarna praat een hulpverlener met je.",
    waiting: "Wachten op een hulpverlener. Houd deze pagina open.",
    waitingAt: "Wachten op een hulpverlener: je bent nummer {n} in de rij. Houd deze pagina open.",
    counsellorHere: "Er is een hulpverlener.",
    counsellorLeft: "De hulpverlener is weg. Even wachten.",
    ended:
      "De chat is afgelopen. Je kunt deze pagina sluiten. Kan iemand op dit apparaat meekijken? Wis deze site dan uit de geschiedenis van je browser.",
    offline: "Geen verbinding. Je berichten gaan weg zodra die terug is.",
    notSent: "Nog niet verstuurd. Gaat weg zodra er weer verbinding is.",
    busy: "Het is nu erg druk. Probeer het over een minuut opnieuw.",
    failed: "De chat kon niet starten. Probeer het zo opnieuw.",
    newChat: "Start een nieuwe chat",
  },
};

/** The visitor's language from the browser: Dutch if they prefer it, else English. */
export function browserLanguage(langs) {
  for (const l of langs || []) {
    const base = String(l).toLowerCase().split("-")[0];
    if (base === "nl") return "nl";
    if (base === "en") return "en";
  }
  return "en";
}

/** The place in line a bot message gives ("number 3 in line" / "nummer 3 in de rij"), or null. */
export function placeInLine(text) {
  const m = /\b(?:number|nummer)\s+(\d+)\s+in\s+(?:line|de rij)\b/i.exec(text);
  return m ? Number(m[1]) : null;
}

/** The numbered choices of a bot question: lines like "2. Someone else". */
export function choicesOf(text) {
  const out = [];
  for (const line of text.split("\n")) {
    const m = /^\s*(\d{1,2})\.\s+(.+?)\s*$/.exec(line);
    if (m) out.push({ number: m[1], label: m[2] });
  }
  // Only a run numbered 1, 2, 3... is a menu.
  return out.every((c, i) => Number(c.number) === i + 1) ? out : [];
}
