package cardvault

// ValidLuhn reports whether a card number passes the Luhn checksum. Used before tokenisation.
func ValidLuhn(number string) bool {
	sum, double := 0, false
	for i := len(number) - 1; i >= 0; i-- {
		c := number[i]
		if c < '0' || c > '9' {
			return false
		}
		d := int(c - '0')
		if double {
			d *= 2
			if d > 9 {
				d -= 9
			}
		}
		sum += d
		double = !double
	}
	return len(number) >= 12 && sum%10 == 0
}

// MaskPAN keeps the first six and last four digits, as PCI DSS allows for display.
func MaskPAN(number string) string {
	if len(number) < 13 {
		return "****"
	}
	masked := []byte(number)
	for i := 6; i < len(number)-4; i++ {
		masked[i] = '*'
	}
	return string(masked)
}
