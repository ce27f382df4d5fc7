package channelsapi

import (
	"errors"
	"fmt"
	"reflect"
	"strings"

	"github.com/go-playground/locales/en"
	ut "github.com/go-playground/universal-translator"
	"github.com/go-playground/validator/v10"
	entranslations "github.com/go-playground/validator/v10/translations/en"
)

// NonFieldErrors is the key of errors about no one field (Django REST
// Framework's name): a Validate hook's cross-field errors, a rule on a
// field hidden from JSON, a composite unique constraint.
const NonFieldErrors = "non_field_errors"

// validation checks the `binding` rules of an API's models: a validator
// configured as Gin's (tag name "binding"), with the validator's English
// messages.
type validation struct {
	rules   *validator.Validate
	english ut.Translator
}

func newValidation() (*validation, error) {
	rules := validator.New()
	rules.SetTagName("binding")
	english := en.New()
	tr, _ := ut.New(english, english).GetTranslator("en")
	if err := entranslations.RegisterDefaultTranslations(rules, tr); err != nil {
		return nil, fmt.Errorf("channelsapi: the validator's English messages: %w", err)
	}
	return &validation{rules, tr}, nil
}

// Validator returns the validator that checks the `binding` rules of the
// models of a: configured as Gin's (tag name "binding") but an instance of
// its own, so register custom rules, and their messages, on it (before
// Add). Rules registered on Gin's binding.Validator do not apply.
func (a *API) Validator() *validator.Validate { return a.valid.rules }

// check reports the `binding` rules of obj's type that the validator does
// not know (it panics on them at the first write otherwise).
func (vd *validation) check(obj any) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("its binding rules: %v (register custom rules on API.Validator before Add)", p)
		}
	}()
	_ = vd.rules.Struct(obj)
	return nil
}

// validate runs the `binding` rules on obj, a pointer to a model, and
// returns a 400 *Error with Django REST Framework style messages keyed by
// JSON field name (nested ones by dotted path, "settings.theme",
// "tags.1"), or nil. Relation fields are not client input: their rules are
// not checked.
func (m *model) validate(vd *validation, obj any) error {
	err := vd.rules.Struct(obj)
	if err == nil {
		return nil
	}
	var verrs validator.ValidationErrors
	if !errors.As(err, &verrs) {
		return err
	}
	fields := map[string][]string{}
	for _, fe := range verrs {
		key, ok := m.errorKey(fe.StructNamespace())
		if !ok {
			continue
		}
		fields[key] = append(fields[key], validationMessage(vd.english, fe))
	}
	if len(fields) == 0 {
		return nil
	}
	return &Error{Fields: fields}
}

// errorKey turns the Go namespace of a failed rule ("Todo.Settings.Theme",
// "Todo.Tags[1]") into the key clients see: the JSON names joined by dots
// ("settings.theme", "tags.1"). ok is false below a relation field, whose
// rules are not checked. A field hidden from JSON is NonFieldErrors.
func (m *model) errorKey(ns string) (key string, ok bool) {
	segs := strings.Split(ns, ".")[1:] // the first is the model's type
	t := m.schema.ModelType
	var path []string
	for _, seg := range segs {
		name, index, _ := strings.Cut(seg, "[")
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct {
			return NonFieldErrors, true
		}
		sf, found := t.FieldByName(name)
		if !found {
			return NonFieldErrors, true
		}
		if len(path) == 0 && m.relation[sf.Name] { // a field of the model, perhaps embedded
			return "", false
		}
		t = sf.Type
		if j, visible := jsonName(sf); !visible {
			return NonFieldErrors, true
		} else if !sf.Anonymous || sf.Tag.Get("json") != "" {
			path = append(path, j)
		}
		for index != "" { // "1]" or "1][2]" or "key]"
			var elem string
			elem, index, _ = strings.Cut(index, "]")
			index = strings.TrimPrefix(index, "[")
			path = append(path, elem)
			for t.Kind() == reflect.Pointer {
				t = t.Elem()
			}
			if k := t.Kind(); k == reflect.Slice || k == reflect.Array || k == reflect.Map {
				t = t.Elem()
			}
		}
	}
	if len(path) == 0 {
		return NonFieldErrors, true
	}
	return strings.Join(path, "."), true
}

// validationMessage turns one failed binding rule into a human message.
func validationMessage(english ut.Translator, fe validator.FieldError) string {
	kind := fe.Kind()
	isString := kind == reflect.String
	isList := kind == reflect.Slice || kind == reflect.Array || kind == reflect.Map
	p := fe.Param()
	switch fe.Tag() {
	case "required", "required_if", "required_unless", "required_with", "required_without":
		return "This field is required."
	case "max", "lte":
		switch {
		case isString:
			return fmt.Sprintf("Ensure this field has no more than %s characters.", p)
		case isList:
			return fmt.Sprintf("Ensure this field has no more than %s elements.", p)
		}
		return fmt.Sprintf("Ensure this value is less than or equal to %s.", p)
	case "min", "gte":
		switch {
		case isString:
			return fmt.Sprintf("Ensure this field has at least %s characters.", p)
		case isList:
			return fmt.Sprintf("Ensure this field has at least %s elements.", p)
		}
		return fmt.Sprintf("Ensure this value is greater than or equal to %s.", p)
	case "lt":
		switch {
		case isString:
			return fmt.Sprintf("Ensure this field has fewer than %s characters.", p)
		case isList:
			return fmt.Sprintf("Ensure this field has fewer than %s elements.", p)
		}
		return fmt.Sprintf("Ensure this value is less than %s.", p)
	case "gt":
		switch {
		case isString:
			return fmt.Sprintf("Ensure this field has more than %s characters.", p)
		case isList:
			return fmt.Sprintf("Ensure this field has more than %s elements.", p)
		}
		return fmt.Sprintf("Ensure this value is greater than %s.", p)
	case "len":
		if isString {
			return fmt.Sprintf("Ensure this field has exactly %s characters.", p)
		}
		if isList {
			return fmt.Sprintf("Ensure this field has exactly %s elements.", p)
		}
		return fmt.Sprintf("Ensure this value is equal to %s.", p)
	case "eq":
		return fmt.Sprintf("Ensure this value is equal to %s.", p)
	case "ne":
		return fmt.Sprintf("Ensure this value is not equal to %s.", p)
	case "oneof":
		return fmt.Sprintf("%q is not a valid choice.", fmt.Sprint(fe.Value()))
	case "email":
		return "Enter a valid email address."
	case "url", "http_url", "uri":
		return "Enter a valid URL."
	case "uuid", "uuid4", "uuid3", "uuid5":
		return "Must be a valid UUID."
	case "ip", "ipv4", "ipv6":
		return "Enter a valid IP address."
	case "alpha":
		return "Enter only letters."
	case "alphanum":
		return "Enter only letters and numbers."
	case "numeric", "number":
		return "Enter a number."
	case "boolean":
		return "Must be a valid boolean."
	case "datetime":
		return fmt.Sprintf("Datetime has wrong format. Use this format: %s.", p)
	case "contains":
		return fmt.Sprintf("Must contain %q.", p)
	case "excludes":
		return fmt.Sprintf("Must not contain %q.", p)
	case "startswith":
		return fmt.Sprintf("Must start with %q.", p)
	case "endswith":
		return fmt.Sprintf("Must end with %q.", p)
	case "lowercase":
		return "Must be lower case."
	case "uppercase":
		return "Must be upper case."
	}
	return translated(english, fe)
}

// translated is the validator's English message for fe, its subject
// rewritten to Django REST Framework's "This field": "Color must be a valid
// HEX color" becomes "This field must be a valid HEX color.". A rule
// without a message names itself.
func translated(english ut.Translator, fe validator.FieldError) string {
	msg := fe.Translate(english)
	if msg == "" || strings.HasPrefix(msg, "Key: '") { // no message for the rule
		if p := fe.Param(); p != "" {
			return fmt.Sprintf("Invalid value (rule %q with %q).", fe.Tag(), p)
		}
		return fmt.Sprintf("Invalid value (rule %q).", fe.Tag())
	}
	if rest, ok := strings.CutPrefix(msg, fe.Field()+" "); ok {
		msg = "This field " + rest
	}
	if !strings.HasSuffix(msg, ".") {
		msg += "."
	}
	return msg
}
