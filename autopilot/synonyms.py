"""Curated words for matching ad copy to IAB Content Taxonomy 1.0 categories (autopilot/derive.py).

Category names alone are too short or too abstract to meet ad copy ("Technology & Computing" never
appears in a power-bank ad), so each category may list the words and phrases that say it. Phrases
are written plainly; derive.py tokenises and normalises them exactly like the text it reads
(normalize_keyword per word, stop words dropped), and checks at import that every code exists.

Plain data only: tuples and dicts, read in their written order, so nothing here depends on hashing.
"""

from __future__ import annotations

from typing import Final

SYNONYMS: Final[dict[str, tuple[str, ...]]] = {
    # Technology & Computing
    "IAB19": (
        "tech", "technology", "gadget", "device", "computer", "laptop", "notebook", "ultrabook",
        "chromebook", "macbook", "pc", "battery", "battery life", "charger", "charging", "usb",
        "cable", "adapter", "software", "app", "code", "coding", "programming", "developer", "ide",
        "code editor", "debugger", "refactoring", "tablet", "headphone", "earbud", "bluetooth",
        "smartwatch", "wireless", "ssd", "processor", "gpu",
    ),
    "IAB19-3": ("antivirus", "malware protection"),
    "IAB19-5": ("mirrorless", "dslr", "action camera"),
    "IAB19-6": (
        "phone", "smartphone", "mobile phone", "iphone", "android phone", "power bank",
        "phone charger", "phone case",
    ),
    "IAB19-8": ("router", "wifi", "wi-fi", "mesh network", "ethernet"),
    "IAB19-9": ("keyboard", "mouse", "monitor", "webcam", "printer", "docking station", "usb hub"),
    "IAB19-18": ("internet", "website", "web hosting", "cloud storage", "browser", "domain name"),
    "IAB19-20": ("typescript",),
    "IAB19-25": ("vpn", "firewall", "password manager", "cybersecurity", "encryption"),
    "IAB19-28": ("power bank", "portable charger"),
    # Travel
    "IAB20": (
        "travel", "trip", "vacation", "holiday", "tour", "itinerary", "destination", "sightseeing",
        "luggage", "suitcase", "passport",
    ),
    "IAB20-3": (
        "flight", "fly", "airline", "airfare", "nonstop", "non-stop", "airport", "layover",
        "checked bag", "boarding pass", "plane",
    ),
    "IAB20-5": ("bed and breakfast", "b&b"),
    "IAB20-6": ("backpacking", "backpacker"),
    "IAB20-7": ("business trip", "business traveler"),
    "IAB20-8": ("new york", "las vegas", "san francisco", "orlando", "hawaii"),
    "IAB20-9": ("campsite", "glamping", "rv park"),
    "IAB20-10": ("toronto", "vancouver", "montreal"),
    "IAB20-12": ("cruise ship",),
    "IAB20-14": (
        "europe", "european", "lisbon", "amsterdam", "berlin", "barcelona", "madrid", "prague",
        "vienna", "portugal", "spain", "germany",
    ),
    "IAB20-15": ("paris", "provence", "french riviera"),
    "IAB20-16": ("athens", "santorini"),
    "IAB20-17": ("weekend getaway", "romantic getaway", "honeymoon"),
    "IAB20-18": (
        "hotel", "motel", "inn", "ryokan", "hostel", "resort", "accommodation", "lodging",
        "hotel room", "free cancellation", "guesthouse",
    ),
    "IAB20-19": ("rome", "venice", "florence", "milan", "tuscany"),
    "IAB20-20": (
        "japan", "japanese", "tokyo", "kyoto", "osaka", "shinjuku", "shibuya", "haneda", "narita",
        "hokkaido", "okinawa", "mount fuji",
    ),
    "IAB20-24": ("onsen", "wellness retreat"),
    "IAB20-25": ("disneyland", "disney world", "amusement park", "roller coaster"),
    "IAB20-26": ("family vacation", "family trip"),
    "IAB20-27": ("london", "edinburgh", "britain", "scotland"),
    # Food & Drink
    "IAB8": (
        "food", "recipe", "cooking", "cook", "meal", "meal kit", "recipe kit", "dinner", "lunch",
        "ingredient", "grocery", "snack", "chef", "food delivery",
    ),
    "IAB8-4": ("dim sum", "dumpling"),
    "IAB8-5": ("craft beer", "brewery", "whiskey"),
    "IAB8-6": (
        "espresso", "latte", "cappuccino", "coffee bean", "coffee grinder", "burr grinder", "grinder",
        "roast", "roasted", "roaster", "single origin", "brew", "barista", "matcha", "cold brew",
        "french press",
    ),
    "IAB8-8": ("cake", "pastry", "bakery"),
    "IAB8-9": ("restaurant", "dining", "takeout", "bistro"),
    "IAB8-12": ("healthy recipe", "low fat", "low calorie"),
    "IAB8-13": ("pasta", "pizza", "risotto"),
    "IAB8-14": ("sushi", "ramen"),
    "IAB8-15": ("taco", "burrito"),
    "IAB8-16": ("plant-based",),
    "IAB8-18": ("sommelier", "vineyard"),
    # Automotive
    "IAB2": ("car", "vehicle", "auto", "suv", "test drive", "dealership", "car lease", "horsepower"),
    "IAB2-1": ("tire", "tyre", "brake pad"),
    "IAB2-2": ("mechanic", "oil change", "car repair"),
    "IAB2-3": ("buying car", "selling car", "used car", "new car"),
    "IAB2-10": ("ev", "electric car", "home charger", "charging station", "ev charger"),
    "IAB2-12": ("plug-in hybrid",),
    "IAB2-15": ("motorcycle", "motorbike", "scooter"),
    # Education
    "IAB5": (
        "learn", "learning", "course", "lesson", "tutor", "tutoring", "student", "school", "study",
        "teacher", "curriculum", "exam", "degree", "university",
    ),
    "IAB5-6": ("online course", "online class", "e-learning"),
    "IAB5-7": ("esl", "toefl", "ielts", "learn english"),
    "IAB5-8": (
        "language", "language course", "fluent", "fluency", "vocabulary", "grammar",
        "pronunciation", "native speaker", "conversation practice",
    ),
    "IAB5-11": ("flashcard",),
    # Careers
    "IAB4": ("job", "hiring", "recruiter"),
    # Shopping
    "IAB22": (
        "shop", "store", "sale", "discount", "deal", "checkout", "free shipping", "free returns",
        "gift", "gift card", "online store", "marketplace",
    ),
    "IAB22-1": ("giveaway", "sweepstakes"),
    "IAB22-2": ("coupon", "promo code", "voucher", "discount code"),
    "IAB22-3": ("price comparison",),
    # Business
    "IAB3": ("b2b", "enterprise", "startup", "small business", "entrepreneur", "productivity"),
    "IAB3-4": ("crm", "erp", "invoicing", "accounting software", "project management", "saas"),
    "IAB3-9": ("payroll", "recruiting"),
    "IAB3-10": ("freight", "warehouse", "supply chain", "fleet management"),
    "IAB3-11": ("seo", "lead generation", "email marketing", "brand awareness"),
    # Personal Finance
    "IAB13": (
        "finance", "money", "bank", "banking", "bank account", "savings", "budgeting", "credit card",
        "debit card", "fintech", "wealth",
    ),
    "IAB13-2": ("mortgage", "credit score", "personal loan", "student loan"),
    "IAB13-6": ("car insurance", "health insurance", "life insurance", "travel insurance"),
    "IAB13-7": ("invest", "investment", "portfolio", "etf", "brokerage", "index fund", "crypto", "bitcoin"),
    "IAB13-10": ("retirement", "pension", "401k"),
    "IAB13-11": ("stock market", "stock trading"),
    "IAB13-12": ("tax return", "tax filing", "tax software"),
    # A few more tier-1 families whose names rarely appear in ad copy
    "IAB7": ("gym", "workout", "wellness", "vitamin", "supplement"),
    "IAB7-44": ("diet", "lose weight"),
    "IAB10": ("furniture", "sofa", "mattress", "home decor"),
    "IAB16": ("pet", "puppy", "kitten", "pet food"),
    "IAB18": ("apparel", "dress", "shoe", "sneaker", "t-shirt"),
}
"""Code → the words and phrases that say it, beyond the words of the category's own name."""

WEAK: Final[tuple[str, ...]] = (
    "shop", "store", "sale", "discount", "deal", "checkout", "free shipping", "free returns", "gift",
    "business", "app", "device", "money", "student",
)
"""Words common to ads of every kind: they count a quarter, so "free returns" in a laptop ad
does not make it a shopping ad."""

NAME_OVERRIDES: Final[dict[str, tuple[str, ...]]] = {
    "IAB1-1": ("literature", "novel", "ebook", "audiobook", "bestseller"),
    "IAB2-3": ("buying cars", "selling cars"),
    "IAB19-4": ("c programming", "c++ programming"),
    "IAB19-21": ("mac repair", "mac troubleshooting"),
    "IAB19-27": ("pc repair", "computer repair"),
    "IAB19-36": ("microsoft windows", "windows pc", "windows laptop"),
    "IAB5-1": (),  # "41832 Education": a broken name in the source taxonomy
    "IAB9-1": ("digital art",),
    "IAB9-2": ("arts and crafts",),
    "IAB9-30": ("video games", "computer games", "gaming"),
    "IAB17-14": ("game and fish",),
    "IAB17-25": ("motorcycles",),
    "IAB20-5": ("bed and breakfasts",),
    "IAB21-3": ("buying homes", "selling homes"),
}
"""Categories whose name, split at "&" and "/", gives parts that mean something else alone."""

AMBIGUOUS: Final[tuple[str, ...]] = (
    "accessory", "advice", "aid", "art", "cold", "commentary", "convertible", "drawing", "email",
    "engine", "entertaining", "entertainment", "family", "home", "interest", "luxury", "magic", "metal",
    "news", "option", "pickup", "running", "space", "stock", "style", "video", "walking", "weather",
)
"""Single words of category names that say little about the category in ad copy ("luxury hotel"
is not Automotive › Luxury): never matched on their own."""

NAME_NOISE: Final[tuple[str, ...]] = ("general", "issues", "resources", "specific", "support")
"""Words of category names ignored like stop words ("Divorce Support" is matched by "divorce")."""

EXCLUDED_FAMILIES: Final[tuple[str, ...]] = ("IAB24", "IAB25", "IAB26")
"""Uncategorized, Non-Standard Content and Illegal Content: policy labels, never derived targeting."""

AD_FILLER: Final[tuple[str, ...]] = (
    "free", "new", "best", "great", "easy", "fast", "quick", "quiet", "light", "long", "short", "full",
    "fresh", "original", "ready", "daily", "weekly", "included", "sorted", "measured", "delivered",
    "shipped", "get", "buy", "find", "see", "pick", "pay", "save", "order", "cancel", "change",
    "compare", "return", "pause", "day", "hour", "minute", "week", "month", "year", "time", "today",
    "tonight", "tomorrow", "one", "two", "three", "four", "five", "ten", "twice",
)
"""Words of ad copy that are no keyword on their own ("free", "day", "included"): a derived keyword
is not made of them only, nor ends with one ("breakfast included" → "breakfast"; "free
cancellation" stays), since derived keywords match as phrases and "free" would match every intent
that says it."""

GENERIC_VERBS: Final[tuple[str, ...]] = (
    "make", "makes", "made", "build", "builds", "built", "keep", "keeps", "kept", "use", "uses", "used",
    "go", "goes", "take", "takes", "give", "gives", "let", "lets", "need", "needs", "want", "wants",
    "bring", "brings", "help", "helps",
)
"""Verbs of any sentence ("TrekCharge makes rugged power banks"): treated like stop words in derived
keywords (trimmed at a phrase's edges, a phrase with one inside is dropped), so neither "make" nor
"power bank built" becomes a keyword that matches every intent saying it."""

STOP_WORDS: Final[tuple[str, ...]] = (
    "a", "an", "the", "and", "or", "but", "nor", "of", "for", "to", "in", "on", "at", "by", "with",
    "from", "as", "into", "onto", "near", "per", "via", "than", "then", "so", "up", "out", "off",
    "is", "are", "was", "be", "been", "it", "its", "this", "that", "these", "those", "your", "you",
    "our", "we", "my", "me", "i", "he", "she", "they", "their", "his", "her", "every", "each", "any",
    "all", "some", "no", "not", "do", "does", "can", "will", "just", "about", "over", "within",
)
"""Function words, dropped before phrase matching (YAKE's own list also holds words like "course"
and "new" that matter for categories, so categories use this shorter one)."""
